"""
Packaging for wsglue.  ``pip install .`` gives ``twistd wsglue`` from any
directory: the plugin goes to twisted/plugins (without an __init__.py, which
would shadow Twisted's own) and the page ships as wsglue.static.
"""

from setuptools import setup

setup(
    name="wsglue",
    version="0.1.0",
    description="A session-aware WebSocket gateway for real-time data streaming apps.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "wsglue",
        "wsglue.cluster",
        "wsglue.examples",
        "wsglue.levers",
        "wsglue.process",
        "wsglue.static",
        "wsglue.web",
        "twisted.plugins",
    ],
    package_dir={"wsglue.static": "static"},
    package_data={"wsglue.static": ["*.html", "scripts/*.js"]},
    include_package_data=False,
    zip_safe=False,
    install_requires=[
        "Twisted[tls]>=23.10.0",
        "autobahn>=23.1.2",
        "service-identity>=21.1.0",
        # --redis: pure Python on Twisted alone, small enough to always ship
        # (1.6 keeps its connections with ClientService: backoff, reconnect).
        "txredisapi>=1.6.0",
        # txredisapi parses Redis replies in C with it when it is installed:
        # a tenth of a worker's CPU per handshake with --workers (one
        # SUBSCRIBE confirmation per session). PyPy gets no wheel for it, and
        # txredisapi's own parser is what the JIT is good at.
        'hiredis>=2.0; platform_python_implementation == "CPython"',
    ],
    extras_require={
        "test": [
            "hypothesis>=6.80",
            "playwright>=1.40",
            "cryptography>=41.0",
            # The bench's Python peer (websockets.asyncio, new in 13.0),
            # which the bench smoke test starts.
            "websockets>=13.0",
            # Twisted's own reactor test suites, which tests/test_reactor.py
            # runs against wsglue's reactor, import it.
            "pyhamcrest>=2",
        ],
    },
)
