"""
The page's session surviving reconnects, in a real browser: Debian's
Chromium through Playwright, against a real C{twistd wsglue} daemon running
L{tests.stream_handler} (a numbered stream of 50 messages a second to the
page's session), while the server drops the page's TCP connection, refuses
it for a while (an outage) and restarts (SPEC sections 11 and 12).

And on C{--workers 2 --redis} (a private redis-server), with the numbered
stream sent to the page's session through the HTTP API, while the worker
that holds the page's connection is killed with SIGKILL
(L{BrowserKilledWorkerTests}).

C{tests/browser_streams_check.py} drives the browser, and starts, stops and
starts again the daemon, in a child process and prints a JSON report; it
runs once per scenario per test run and each test here checks one
behaviour in that report.  If Chromium or Playwright is missing, every test
here fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import HERE, ROOT, TWISTD, CollectOutput, freePort
from tests.redis_server import startRedis

SCRIPT = os.path.join(HERE, "browser_streams_check.py")

_report: Dict[str, Any] = {}


@inlineCallbacks
def _run(testCase: TestCase, config: Dict[str, Any], env: Dict[str, str]) -> Any:
    """
    Run the browser script with C{config}; fire with its report.
    """
    collect = CollectOutput()
    transport = reactor.spawnProcess(
        collect,
        sys.executable,
        [sys.executable, SCRIPT, json.dumps(config)],
        env=env,
        path=ROOT,
    )

    def stop() -> Deferred:
        # Only if the browser script outlives its own bounded waits; it
        # stops its daemon on SIGTERM.
        if not collect.ended.called:
            transport.signalProcess("TERM")
        return collect.ended

    testCase.addCleanup(stop)
    killer = reactor.callLater(150, lambda: collect.ended.called or transport.signalProcess("TERM"))
    code = yield collect.ended
    if killer.active():
        killer.cancel()
    lines = collect.out.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = {"error": f"no report (exit {code}): {collect.err.decode('utf-8', 'replace')[-2000:]}"}
    return report


@inlineCallbacks
def _browseCluster(testCase: TestCase) -> Any:
    """
    The killed-worker scenario (L{tests.browser_streams_check.mainCluster})
    on C{--workers 2 --redis} with a private Redis.
    """
    redis = yield startRedis(testCase)
    folder = tempfile.mkdtemp(prefix="wsglue-browser-")
    testCase.addCleanup(shutil.rmtree, folder, True)
    keys = os.path.join(folder, "keys")
    with open(keys, "w") as f:
        f.write("browser-test-key\n")
    os.chmod(keys, 0o600)
    port, api = freePort(), freePort()
    argv = [
        sys.executable,
        "-c",
        TWISTD,
        "--pidfile=",
        "-n",
        "wsglue",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--api",
        f"tcp:{api}:interface=127.0.0.1",
        "--api-key-file",
        keys,
        "--redis",
        redis.url,
        "--workers",
        "2",
        "--handler",
        "tests.cluster_record_handler:Recording",
        # The outage lasts a few seconds at 50 messages a second.
        "--history-size",
        "2000",
        "--broadcast-interval",
        "0",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["RECORD_FILE"] = os.path.join(folder, "record")
    hold = os.path.join(folder, "hold")
    env["HOLD_FILE"] = hold
    config = {
        "cluster": True,
        "argv": argv,
        "port": port,
        "api": f"http://127.0.0.1:{api}",
        "key": "browser-test-key",
        "cookie": "CookieName",
        "hold": hold,
    }
    report = yield _run(testCase, config, env)
    return report


@inlineCallbacks
def _browse(testCase: TestCase) -> Any:
    port = freePort()
    argv = [
        sys.executable,
        "-c",
        TWISTD,
        "--pidfile=",
        "-n",
        "wsglue",
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--handler",
        "tests.stream_handler:NumberedStream",
        # The outage lasts a few seconds at 50 messages a second.
        "--history-size",
        "2000",
        "--broadcast-interval",
        "0",
    ]
    env = dict(os.environ)
    # The daemon runs this checkout (and finds tests.stream_handler).
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    report = yield _run(testCase, {"argv": argv, "port": port}, env)
    return report


def browserReport(testCase: TestCase, name: str = "report", browse: Any = _browse) -> Deferred:
    """
    The report of the one browser run of C{browse}, made on first use and
    kept under C{name}.
    """
    if name in _report:
        d: Deferred = Deferred()
        d.callback(_report[name])
        return d
    d = browse(testCase)

    def keep(report: Any) -> Any:
        _report[name] = report
        return report

    return d.addCallback(keep)


def numbers(output: str) -> List[int]:
    """
    The numbers of the stream's messages, C{<== n K}, in the order shown.
    """
    return [int(line[len("<== n ") :]) for line in output.splitlines() if line.startswith("<== n ")]


class BrowserStreamTests(TestCase):
    """
    The demo page keeps its session through drops, outages and restarts.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        self.report = yield browserReport(self)

    def get(self, key: str) -> Any:
        """
        A value of the report; fails the test with the browser's error (and
        the page's output at that moment) if the run stopped before it.
        """
        if key not in self.report:
            self.fail(
                f"browser run stopped before {key!r}: {self.report.get('error')}\n"
                f"steps: {self.report.get('steps')}\n"
                f"#output: {self.report.get('outputAtError')!r}\n"
                f"daemon: {self.report.get('daemonOutput')}"
            )
        return self.report[key]

    def beforeRestart(self) -> str:
        """
        #output up to the page's resync after the restart.
        """
        output: str = self.get("outputAfterRestart")
        return output[: output.index("Resynced:")]

    def afterRestart(self) -> str:
        output: str = self.get("outputAfterRestart")
        return output[output.index("Resynced:") :]

    def assertOnceInOrder(self, shown: List[int]) -> None:
        self.assertTrue(shown, "no stream message shown")
        self.assertEqual(shown, list(range(shown[0], shown[-1] + 1)))

    def test_ranWithoutError(self) -> None:
        """
        Chromium ran the whole scenario: every wait was met.
        """
        self.assertIsNone(self.report.get("error"), self.report)

    def test_stateConnected(self) -> None:
        """
        Once connected, #state says so.
        """
        self.assertEqual(self.get("stateConnected"), "connected")

    def test_dropResumes(self) -> None:
        """
        When the server aborts the page's TCP connection, the page logs
        C{Disconnected!}, reconnects by itself (C{Connecting to:},
        C{Connected!}) and shows that it resumed.
        """
        self.assertEqual(self.get("stateAfterDrop"), "resumed")
        lines = [line for line in self.beforeRestart().splitlines() if not line.startswith("<== n ")]
        drop = lines.index("==> drop")
        self.assertEqual(lines[drop + 1 : drop + 4], ["Disconnected!", lines[0], "Connected!"])
        self.assertTrue(lines[0].startswith("Connecting to: ws://127.0.0.1:"), lines[0])
        self.assertTrue(lines[drop + 4].startswith("Resumed:"), lines)

    def test_everyMessageOnceInOrder(self) -> None:
        """
        Through the drop and the outage, the page shows every message of
        the stream once and in order, from near the start on (the messages
        sent before the page's first hello are in no stream it can resume:
        a fresh client starts at the current position).
        """
        shown = numbers(self.beforeRestart())
        self.assertOnceInOrder(shown)
        # 50 a second: at most half a second between the session opening
        # and the first hello, on a loaded machine.
        self.assertLessEqual(shown[0], 25)
        # Well past the outage: the stream ran on meanwhile.
        self.assertGreater(shown[-1], 70)

    def test_outageEachAttemptLogged(self) -> None:
        """
        During the outage the page says it is reconnecting, logs
        C{Disconnected!} once and C{Connecting to:} for each attempt, and
        C{Connected!} only when an attempt succeeds.
        """
        self.assertEqual(self.get("stateDuringHold"), "reconnecting")
        lines = [line for line in self.get("outputAfterHold").splitlines() if not line.startswith("<== n ")]
        hold = lines.index("==> hold")
        resumed = lines.index("Connected!", hold)
        during = lines[hold + 1 : resumed]
        self.assertEqual(during.count("Disconnected!"), 1)
        self.assertGreaterEqual(len([line for line in during if line.startswith("Connecting to:")]), 2)

    def test_keptWhileOffline(self) -> None:
        """
        Messages typed during the outage are logged as kept, then sent on
        resume and taken by the handler once each.
        """
        during = self.get("outputDuringHold").splitlines()
        for i in (1, 2, 3):
            self.assertIn(f"==> typed {i} (kept: sent once reconnected)", during)
        after = self.get("outputAfterHold").splitlines()
        for i in (1, 2, 3):
            self.assertIn(f"<== count typed {i} = 1", after)

    def test_restartResyncs(self) -> None:
        """
        After the daemon restarts on the same port (its in-memory history
        lost), the page reconnects by itself and shows it resynced.
        """
        self.assertEqual(self.get("stateAfterRestart"), "resynced")
        lines = [line for line in self.afterRestart().splitlines() if not line.startswith("<== n ")]
        self.assertTrue(lines[0].startswith("Resynced:"))
        before = [line for line in self.beforeRestart().splitlines() if not line.startswith("<== n ")]
        self.assertEqual(before[-1], "Connected!")

    def test_newStreamAfterResync(self) -> None:
        """
        After the resync the page receives the restarted daemon's stream,
        once and in order.
        """
        shown = numbers(self.afterRestart())
        self.assertOnceInOrder(shown)
        self.assertLessEqual(shown[0], 5)
        self.assertGreaterEqual(shown[-1], 50)

    def test_keptWhileDown(self) -> None:
        """
        A message typed while the daemon was down is sent once it is back,
        and taken by the handler once.
        """
        output = self.get("outputAfterRestart").splitlines()
        self.assertIn("==> typed while down (kept: sent once reconnected)", output)
        self.assertIn("<== count typed while down = 1", output)

    def test_disconnectStaysClosed(self) -> None:
        """
        After #disconnect, #state says so and sending logs C{Not Connected!}.
        """
        end = self.get("outputEnd").splitlines()
        self.assertEqual(end[-2:], ["Disconnected!", "Not Connected!"])


class BrowserKilledWorkerTests(TestCase):
    """
    The demo page on C{--workers 2 --redis}, receiving a numbered stream
    from the HTTP API (so that the stream outlives any one worker), while
    the worker that holds its connection is killed with SIGKILL: the page
    resumes on a worker that is alive, and nothing is lost or doubled.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        self.report = yield browserReport(self, "cluster", _browseCluster)

    get = BrowserStreamTests.get

    def afterKill(self) -> List[str]:
        return [line for line in self.get("outputAfterKill").splitlines() if not line.startswith("<== n ")]

    def test_ranWithoutError(self) -> None:
        """
        Chromium ran the whole scenario: every wait was met, and the API
        took every message of the stream.
        """
        self.assertIsNone(self.report.get("error"), self.report)
        self.assertIsNone(self.report.get("producerError"), self.report)

    def test_killedAWorker(self) -> None:
        """
        The process killed was a worker of the daemon (the page's reply
        named it), and the page came back on a live one.
        """
        self.assertTrue(self.get("workerIsChild"))
        self.assertNotEqual(self.get("pidAfter"), self.get("pidKilled"))

    def test_resumed(self) -> None:
        """
        After the kill the page says it is reconnecting, then that it
        resumed (Redis kept its streams): never that it resynced.
        """
        self.assertEqual(self.get("stateAfterKill"), "resumed")
        lines = self.afterKill()
        self.assertNotIn("Resynced: the server could not replay what was missed.", lines)
        self.assertEqual(lines.count("Resumed: the messages missed meanwhile follow."), 1)
        resumed = lines.index("Resumed: the messages missed meanwhile follow.")
        self.assertEqual(lines[resumed - 1], "Connected!")
        kill = lines.index("<== pid " + str(self.get("pidKilled")))
        self.assertEqual(lines[kill + 1], "Disconnected!")

    def test_everyMessageOnceInOrder(self) -> None:
        """
        Across the kill, the page shows every message of the stream once
        and in order, from the first few to the last the API took,
        including those sent while it was offline.
        """
        shown = numbers(self.get("outputAfterKill"))
        self.assertTrue(shown, "no stream message shown")
        # The producer starts once the page is connected: its first
        # messages already have a stream to go to.
        self.assertEqual(shown, list(range(1, self.get("sent") + 1)))
        self.assertGreater(self.get("sentWhileOffline"), self.get("killedAfter"))

    def test_typedWhileOfflineOnce(self) -> None:
        """
        Messages typed while the page was offline are logged as kept, then
        sent on resume and taken once each, counted across every worker.
        """
        offline = self.get("outputWhileOffline").splitlines()
        for i in (1, 2, 3):
            self.assertIn(f"==> typed {i} (kept: sent once reconnected)", offline)
        after = self.get("outputAfterKill").splitlines()
        for i in (1, 2, 3):
            self.assertIn(f"<== count typed {i} = 1", after)
