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
    python_requires=">=3.11",
    packages=[
        "wsglue",
        "wsglue.api",
        "wsglue.cluster",
        "wsglue.examples",
        "wsglue.levers",
        "wsglue.process",
        "wsglue.sources",
        "wsglue.static",
        "wsglue.web",
        "twisted.plugins",
    ],
    package_dir={"wsglue.static": "static"},
    package_data={"wsglue.static": ["*.html", "scripts/*.js"], "wsglue.api": ["openapi.json", "admin/*"]},
    include_package_data=False,
    zip_safe=False,
    # The ranges below are the tested ones: the whole suite passes at both
    # ends, the floor set pinned in constraints/floor.txt and the newest set
    # in constraints/newest.txt (tests/run.sh runs it on each).
    install_requires=[
        # 26.4 is the first Twisted whose TLS works with pyOpenSSL 26
        # (older ones fail every TLS connection in _applyProtocolNegotiation).
        "Twisted[tls]>=26.4,<27",
        "autobahn>=23.1.2,<27",
        "service-identity>=21.1.0,<27",
        # --redis: pure Python on Twisted alone, small enough to always ship
        # (1.6 keeps its connections with ClientService: backoff, reconnect).
        "txredisapi>=1.6,<1.7",
        # txredisapi parses Redis replies in C with it when it is installed:
        # a tenth of a worker's CPU per handshake with --workers (one
        # SUBSCRIBE confirmation per session). PyPy gets no wheel for it, and
        # txredisapi's own parser is what the JIT is good at. (2.1 is the
        # first with wheels for CPython 3.11.)
        'hiredis>=2.1,<4; platform_python_implementation == "CPython"',
        # GET /metrics: the text format, written by a collector of our own
        # (its API has not changed since long before 0.17).
        "prometheus_client>=0.17,<0.27",
    ],
    extras_require={
        "test": [
            # 6.130.12: the oldest schemathesis takes.
            "hypothesis>=6.130.12,<7",
            "playwright>=1.40,<2",
            # Twisted[tls]'s pyOpenSSL (25.2 at the floor) needs 45.0.7.
            "cryptography>=45.0.7,<51",
            # The bench's Python peer (websockets.asyncio, new in 13.0),
            # which the bench smoke test starts.
            "websockets>=13.0,<18",
            # Twisted's own reactor test suites, which tests/test_reactor.py
            # runs against wsglue's reactor, import it.
            "pyhamcrest>=2,<3",
            # The HTTP API's tests talk to it with treq, and check it against
            # its OpenAPI document with schemathesis (whose checks change
            # between minor releases).
            "treq>=24.9.1,<27",
            "schemathesis>=4.32.5,<4.33",
            # Lint and type checks (tests/run.sh, configured in
            # pyproject.toml): their rules change between minor releases.
            "ruff>=0.17.6,<0.18",
            "mypy>=2.4.1,<2.5",
            # mypy's plugin for zope.interface (Twisted's interfaces as types).
            "mypy-zope>=1.0.17,<1.1",
        ],
    },
)
