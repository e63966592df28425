"""
C{static/scripts/wsglue.js}, the browser client of C{wsglue.v1}, on its own:
C{tests/wsglue_unit.js} drives it in Debian's Chromium with a fake
WebSocket and fake timers (C{tests/wsglue_unit_check.py}, a child process
run once per test run), and each test here checks one behaviour of the
result.  The same client against a real daemon is in
L{tests.test_browser_streams}.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from typing import Any, Dict

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import HERE, ROOT, CollectOutput

SCRIPT = os.path.join(HERE, "wsglue_unit_check.py")

_report: Dict[str, Any] = {}


@inlineCallbacks
def _run(testCase: TestCase) -> Any:
    collect = CollectOutput()
    transport = reactor.spawnProcess(collect, sys.executable, [sys.executable, SCRIPT], env=dict(os.environ), path=HERE)

    def stop() -> Deferred:
        if not collect.ended.called:
            transport.signalProcess("TERM")
        return collect.ended

    testCase.addCleanup(stop)
    killer = reactor.callLater(60, lambda: collect.ended.called or transport.signalProcess("KILL"))
    code = yield collect.ended
    if killer.active():
        killer.cancel()
    lines = collect.out.decode("utf-8", "replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"no report (exit {code}): {collect.err.decode('utf-8', 'replace')[-2000:]}"}


def report(testCase: TestCase) -> Deferred:
    """
    The result of the one run, made on first use.
    """
    if "report" in _report:
        d: Deferred = Deferred()
        d.callback(_report["report"])
        return d

    def keep(result: Any) -> Any:
        _report["report"] = result
        return result

    return _run(testCase).addCallback(keep)


class WsGlueTests(TestCase):
    """
    The browser client's protocol, reconnects and states.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        self.result = yield report(self)
        if self.result.get("error") is not None:
            self.fail(self.result["error"])

    def test_noPageError(self) -> None:
        """
        The script ran without an uncaught error.
        """
        self.assertEqual(self.result["pageErrors"], [])

    def test_offersSubprotocol(self) -> None:
        """
        It connects at once, offering C{wsglue.v1}.
        """
        self.assertEqual(self.result["protocols"], ["wsglue.v1"])
        self.assertEqual(self.result["firstStates"], ["connecting"])

    def test_freshHello(self) -> None:
        """
        Its first frame is a hello with a client id of 8 to 64
        C{[A-Za-z0-9_-]} and no resume; the welcome says resynced, fresh.
        """
        self.assertRegex(self.result["clientId"], r"\A[A-Za-z0-9_-]{8,64}\Z")
        self.assertEqual(self.result["hello"], {"t": "hello", "client": self.result["clientId"]})
        self.assertEqual(self.result["welcomeState"], "resynced")
        self.assertTrue(self.result["welcomeFresh"])

    def test_messages(self) -> None:
        """
        Stream messages and replies reach C{onmessage} with their stream
        and offset.
        """
        self.assertEqual(
            self.result["messages"], [["four", "session", 4], ["eight", "broadcast", 8], ["reply", "reply", None]]
        )

    def test_send(self) -> None:
        """
        C{send} on a live session sends an C{m} frame with id 1.
        """
        self.assertEqual(self.result["sendId"], 1)
        self.assertEqual(self.result["sentLive"], {"t": "m", "id": 1, "d": "a"})

    def test_resume(self) -> None:
        """
        After a dropped connection it reconnects by itself and says hello
        with the same client id and its positions (the welcome's, moved by
        each message); a recovered welcome says resumed.
        """
        self.assertEqual(self.result["dropState"], "reconnecting")
        self.assertEqual(self.result["socketsAfterReconnect"], 2)
        self.assertEqual(
            self.result["resumeHello"],
            {"t": "hello", "client": self.result["clientId"], "resume": {"s": ["E1", 4], "b": ["E2", 8]}},
        )
        self.assertEqual(self.result["resumeState"], "resumed")

    def test_resendsUnacked(self) -> None:
        """
        Messages not acknowledged, sent before the drop or kept while
        offline, are sent on resume with their ids, and forgotten once
        acknowledged.
        """
        self.assertEqual(self.result["pendingOffline"], 2)
        self.assertEqual(self.result["resent"], [{"t": "m", "id": 1, "d": "a"}, {"t": "m", "id": 2, "d": "offline"}])
        self.assertEqual(self.result["pendingAfterAck"], 0)

    def test_backoff(self) -> None:
        """
        Failed attempts in a row wait up to 0.5, 1, 2, 4 … seconds, at most
        20 (with the random part at its top).
        """
        self.assertEqual(self.result["dropDelay"], 0.4995)
        self.assertEqual(self.result["delays"], [0.4995, 0.999, 1.998, 3.996, 7.992, 15.984, 19.98, 19.98])

    def test_soonAfterGoingAway(self) -> None:
        """
        After 1001 or 1012 it comes back within half a second, however many
        attempts failed before.
        """
        for delay in self.result["soon"]:
            self.assertLess(delay, 0.5)

    def test_welcomeResetsBackoff(self) -> None:
        """
        A welcome starts the delays again from the shortest; a resync
        after a reconnect is not fresh and takes the welcome's positions.
        """
        self.assertEqual(self.result["delayAfterWelcome"], 0.4995)
        self.assertEqual(self.result["resyncState"], "resynced")
        self.assertFalse(self.result["resyncFresh"])
        self.assertEqual(self.result["positionsAfterResync"], {"s": ["E3", 0], "b": ["E4", 0]})

    def test_noReconnectAfterPolicyClose(self) -> None:
        """
        After a 1008 it says closed and does not come back.
        """
        self.assertEqual(self.result["policyState"], ["closed", {"code": 1008, "byUser": False}])
        self.assertEqual(self.result["timersAfterPolicy"], 0)

    def test_userClose(self) -> None:
        """
        C{open()} after a close resumes; the user's C{close()} closes with
        1000, says closed and does not come back.
        """
        self.assertIn("resume", self.result["helloAfterReopen"])
        self.assertEqual(self.result["userClose"], [1000, ["closed", {"code": 1000, "byUser": True}]])
        self.assertEqual(self.result["statesAfterUserClose"], "closed")
        self.assertEqual(self.result["timersAfterUserClose"], 0)

    def test_keptMessagesBounded(self) -> None:
        """
        At most C{maxPending} messages wait for their acknowledgement;
        C{send} returns 0 beyond that.
        """
        self.assertEqual(self.result["bounded"], [1, 2, 3, 0])

    def test_welcomeTimeout(self) -> None:
        """
        An attempt that gets no welcome within its timeout is given up and
        retried.
        """
        self.assertEqual(self.result["timeoutTimers"], 1)
        self.assertTrue(self.result["slowClosed"])
        self.assertEqual(self.result["slowStates"], ["open", "reconnecting", "closed"])

    def test_plainServer(self) -> None:
        """
        A server that does not select C{wsglue.v1}: no hello, the kept
        message and later ones go out as plain text, messages come in as
        C{plain}; the state is resynced (plain), with no timer left.
        """
        self.assertEqual(self.result["plainSent"], ["early", "ping"])
        self.assertEqual(self.result["plainSentId"], 2)
        self.assertEqual(self.result["plainMessages"], [["pong", "plain"]])
        self.assertEqual(self.result["plainStates"], [["connecting", False], ["open", False], ["resynced", True]])
        self.assertEqual(self.result["plainPending"], 0)
        self.assertEqual(self.result["plainTimers"], 0)


class PageScriptsTests(SynchronousTestCase):
    """
    The page loads plain script files that ship with it.
    """

    def test_scriptsShipped(self) -> None:
        """
        C{index.html} loads C{scripts/wsglue.js} before
        C{scripts/ws-script.js}, both plain files in C{static/scripts} that
        C{setup.py}'s C{package_data} pattern takes, and nothing else.
        """
        with open(os.path.join(ROOT, "static", "index.html"), encoding="utf-8") as f:
            page = f.read()
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
        self.assertEqual(scripts, ["scripts/wsglue.js", "scripts/ws-script.js"])
        self.assertEqual(len(re.findall(r"<script", page)), 2)
        for script in scripts:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, "static", script)), script)
            self.assertTrue(fnmatch.fnmatch(script, "scripts/*.js"))
