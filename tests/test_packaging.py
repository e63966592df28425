"""
Tests of the installed artifact: a fresh virtualenv, a non-editable
C{pip install} of this repository, and C{twistd wsglue} run from an empty
directory with that virtualenv's Python (so the checkout is not on the path).

The virtualenv is built once per test run (it takes seconds) and removed at
exit.  If pip cannot install (no registry, a broken setup.py), every test
here fails with pip's output: nothing is skipped.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.common import ROOT, connect, freePort, spawnDaemon
from tests.test_web import get

# What of the checkout goes into the build: everything setup.py reads.
_SOURCES = ("setup.py", "README.md", "wsglue", "twisted", "static", "glue.tac")

_venv: Dict[str, Any] = {}


def _cleanEnvironment() -> Dict[str, str]:
    environ = dict(os.environ)
    # Nothing of this checkout or of the test's own virtualenv may leak in.
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        environ.pop(name, None)
    return environ


@inlineCallbacks
def _run(argv: List[str], cwd: str, timeout: float) -> Any:
    d = getProcessOutputAndValue(argv[0], argv[1:], env=_cleanEnvironment(), path=cwd)
    d.addTimeout(timeout, reactor)
    out, err, code = yield d
    return out.decode("utf-8", "replace") + err.decode("utf-8", "replace"), code


@inlineCallbacks
def _build() -> Any:
    base = tempfile.mkdtemp(prefix="wsglue-packaging-")
    atexit.register(shutil.rmtree, base, True)
    # Build from a copy: pip would otherwise write build/ and *.egg-info into
    # the checkout, and reuse a stale build/ left there.
    source = os.path.join(base, "src")
    os.makedirs(source)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in _SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(source, name), ignore=ignore)
        elif os.path.exists(path):
            shutil.copy2(path, source)
    venv = os.path.join(base, "venv")
    output, code = yield _run([sys.executable, "-m", "venv", venv], base, 120)
    if code != 0:
        raise AssertionError(f"python -m venv failed ({code}):\n{output}")
    python = os.path.join(venv, "bin", "python")
    output, code = yield _run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
        base,
        240,
    )
    if code != 0:
        raise AssertionError(f"pip install {source} failed ({code}):\n{output}")
    return venv


def installedVenv() -> Deferred:
    """
    The virtualenv with wsglue installed; built on first use.
    """
    if "result" in _venv:
        result = _venv["result"]
        d: Deferred = Deferred()
        if isinstance(result, BaseException):
            d.errback(result)
        else:
            d.callback(result)
        return d
    waiting = _venv.setdefault("waiting", [])
    d = Deferred()
    waiting.append(d)
    if len(waiting) == 1:

        def done(result: Any) -> None:
            value = result.value if hasattr(result, "value") else result
            _venv["result"] = value
            for w in _venv.pop("waiting"):
                if isinstance(value, BaseException):
                    w.errback(value)
                else:
                    w.callback(value)

        _build().addBoth(done)
    return d


class InstalledTests(TestCase):
    """
    C{pip install .} (not editable) into a fresh virtualenv gives a working
    C{twistd wsglue} from any directory.
    """

    # The first test builds the virtualenv.
    timeout = 300

    @inlineCallbacks
    def setUp(self) -> Any:
        self.venv = yield installedVenv()
        self.python = os.path.join(self.venv, "bin", "python")
        self.empty = os.path.abspath(self.mktemp())
        os.makedirs(self.empty)

    @inlineCallbacks
    def runPython(self, *args: str) -> Any:
        output, code = yield _run([self.python, *args], self.empty, 60)
        return output, code

    def daemon(self, port: int, *argv: str) -> Any:
        return spawnDaemon(
            self,
            ["--port", f"tcp:{port}:interface=127.0.0.1", "--broadcast-interval", "0", *argv],
            executable=self.python,
            cwd=self.empty,
            env={"PYTHONPATH": ""},
        )

    @inlineCallbacks
    def test_pluginListed(self) -> None:
        """
        The installed C{twistd --help} lists the C{wsglue} plugin.
        """
        output, code = yield _run([os.path.join(self.venv, "bin", "twistd"), "--help"], self.empty, 60)
        self.assertEqual(code, 0, output)
        commands = [line.split() for line in output.splitlines() if line.startswith("    ")]
        self.assertIn("wsglue", [words[0] for words in commands if words], output)

    @inlineCallbacks
    def test_importedFromTheVirtualenv(self) -> None:
        """
        The daemon's Python imports wsglue from the virtualenv, not from the
        checkout, and the shipped page is in the installed package.
        """
        output, code = yield self.runPython(
            "-c",
            "import wsglue, wsglue.tap; print(wsglue.__file__); print(wsglue.tap.defaultStaticPath())",
        )
        self.assertEqual(code, 0, output)
        module, static = output.split()[:2]
        self.assertTrue(module.startswith(self.venv), module)
        self.assertTrue(static.startswith(self.venv), static)
        self.assertTrue(os.path.isfile(os.path.join(static, "index.html")))
        self.assertTrue(os.path.isfile(os.path.join(static, "scripts", "ws-script.js")))

    @inlineCallbacks
    def test_redisRepliesParsedInC(self) -> None:
        """
        On CPython the install brings hiredis, and txredisapi parses Redis
        replies with it (the cluster's SUBSCRIBE confirmations, one per
        session).
        """
        output, code = yield self.runPython(
            "-c",
            "import platform, txredisapi; print(platform.python_implementation(), txredisapi.RedisProtocol.__name__)",
        )
        self.assertEqual(code, 0, output)
        self.assertEqual(output.split()[-2:], ["CPython", "HiredisProtocol"], output)

    def test_noTwistedInitFiles(self) -> None:
        """
        The installed files of wsglue hold the plugin but no
        C{twisted/__init__.py} or C{twisted/plugins/__init__.py} (which
        would shadow Twisted's own).
        """
        records = glob.glob(os.path.join(self.venv, "lib", "python*", "site-packages", "wsglue-*.dist-info", "RECORD"))
        self.assertEqual(len(records), 1, records)
        with open(records[0], encoding="utf-8") as f:
            files = [line.split(",")[0] for line in f]
        self.assertIn("twisted/plugins/wsglue_plugin.py", files)
        self.assertIn("wsglue/static/index.html", files)
        self.assertIn("wsglue/static/scripts/ws-script.js", files)
        self.assertNotIn("twisted/__init__.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)

    @inlineCallbacks
    def test_servesPageAndScript(self) -> None:
        """
        C{twistd -n wsglue} started from an empty directory serves the page
        at C{/} and its script.
        """
        port = freePort()
        daemon = self.daemon(port)
        yield daemon.waitForOutput("started websocket server at")
        page = yield get(port, "/")
        script = yield get(port, "/scripts/ws-script.js")
        self.assertEqual(page.status, 200)
        self.assertIn(b'id="connect"', page.body)
        self.assertEqual(script.status, 200)
        self.assertIn("javascript", script.headers["content-type"])
        self.assertIn(b"WebSocket", script.body)

    @inlineCallbacks
    def test_pingPong(self) -> None:
        """
        The installed daemon answers C{ping} with C{pong} over a WebSocket
        and stops with exit status 0.
        """
        port = freePort()
        daemon = self.daemon(port)
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        daemon.signal("TERM")
        self.assertEqual((yield client.closed)[0], 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)
