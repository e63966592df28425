"""
The page in a real browser: Debian's Chromium through Playwright, against a
real C{twistd wsglue} daemon (SPEC section 11, and the cookie of section 5 as
a browser stores it).

Playwright's sync API cannot run in trial's reactor thread, so
C{tests/browser_check.py} drives the browser in a child process and prints a
JSON report; it runs once per test run and each test here checks one
behaviour in that report.  If Chromium or Playwright is missing, the report
says so and every test here fails: nothing is skipped.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import HERE, CollectOutput, freePort, spawnDaemon

SCRIPT = os.path.join(HERE, "browser_check.py")

_report: Dict[str, Any] = {}


@inlineCallbacks
def _browse(testCase: TestCase) -> Any:
    port = freePort()
    daemon = spawnDaemon(
        testCase,
        ["--port", f"tcp:{port}:interface=127.0.0.1", "--broadcast-interval", "0.5"],
    )
    yield daemon.waitForOutput("started websocket server at")
    collect = CollectOutput()
    transport = reactor.spawnProcess(
        collect,
        sys.executable,
        [sys.executable, SCRIPT, f"http://127.0.0.1:{port}/"],
        env=dict(os.environ),
        path=HERE,
    )

    def stop() -> Deferred:
        # Only if the browser script outlives its own bounded waits.
        if not collect.ended.called:
            transport.signalProcess("TERM")
        return collect.ended

    testCase.addCleanup(stop)
    killer = reactor.callLater(90, lambda: collect.ended.called or transport.signalProcess("KILL"))
    code = yield collect.ended
    if killer.active():
        killer.cancel()
    lines = collect.out.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = {"error": f"no report (exit {code}): {collect.err.decode('utf-8', 'replace')[-2000:]}"}
    report["daemonOutput"] = daemon.output
    return report


def browserReport(testCase: TestCase) -> Deferred:
    """
    The report of the one browser run, made on first use.
    """
    if "report" in _report:
        d: Deferred = Deferred()
        d.callback(_report["report"])
        return d
    d = _browse(testCase)

    def keep(report: Any) -> Any:
        _report["report"] = report
        return report

    return d.addCallback(keep)


class BrowserTests(TestCase):
    """
    The demo page in Chromium.
    """

    timeout = 120

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
                f"#output: {self.report.get('outputAtError')!r}"
            )
        return self.report[key]

    def lines(self, key: str) -> List[str]:
        """
        The lines of #output saved under C{key}, without the demo
        broadcast's C{<== notify} lines, which may land between any two.
        """
        return [line for line in self.get(key).splitlines() if line != "<== notify"]

    def cookie(self, key: str) -> Optional[Dict[str, Any]]:
        cookies = self.get(key)
        self.assertEqual(len(cookies), 1, cookies)
        return cookies[0]

    def test_ranWithoutError(self) -> None:
        """
        Chromium ran the whole scenario: every wait was met.
        """
        self.assertIsNone(self.report.get("error"), self.report)

    def test_elements(self) -> None:
        """
        The page has #connect and #disconnect buttons, #message (a text input
        with placeholder C{ping} and maxlength 240), #sendMessage, and a
        read-only #output textarea.
        """
        elements = self.get("elements")
        self.assertEqual(elements["connect"]["tag"], "button")
        self.assertEqual(elements["disconnect"]["tag"], "button")
        self.assertEqual(elements["sendMessage"]["tag"], "button")
        self.assertEqual(elements["message"]["tag"], "input")
        self.assertEqual(elements["message"]["type"], "text")
        self.assertEqual(elements["message"]["placeholder"], "ping")
        self.assertEqual(elements["message"]["maxlength"], "240")
        self.assertEqual(elements["output"]["tag"], "textarea")
        self.assertTrue(elements["output"]["readonly"])

    def test_notConnected(self) -> None:
        """
        Send and Disconnect before connecting each log C{Not Connected!}.
        """
        self.assertEqual(self.lines("outputNotConnected"), ["Not Connected!", "Not Connected!"])

    def test_connect(self) -> None:
        """
        Connect logs C{Connecting to: ws://127.0.0.1:PORT/} (the page's own
        host) and then C{Connected!}.
        """
        lines = self.lines("outputConnected")[2:]
        port = self.get("daemonOutput").split("started websocket server at ws://127.0.0.1:")[1]
        port = port.split()[0]
        self.assertEqual(lines, [f"Connecting to: ws://127.0.0.1:{port}/", "Connected!"])

    def test_emptyMessageSendsPing(self) -> None:
        """
        Sending an empty message sends C{ping}, answered C{pong}.
        """
        self.assertEqual(self.lines("outputPing")[-2:], ["==> ping", "<== pong"])

    def test_enterSendsText(self) -> None:
        """
        Text typed in #message and Enter is sent and answered C{ok}; the
        input is emptied.
        """
        self.assertEqual(self.lines("outputText")[-2:], ["==> hello there", "<== ok"])
        self.assertEqual(self.get("messageAfterSend"), "")

    def test_notify(self) -> None:
        """
        The demo broadcast shows up as C{<== notify}.
        """
        self.assertIn("<== notify", self.get("outputNotify").splitlines())

    def test_disconnect(self) -> None:
        """
        Disconnect logs C{Disconnected!}.
        """
        self.assertEqual(self.lines("outputDisconnected")[-1], "Disconnected!")

    def test_cookieHttpOnly(self) -> None:
        """
        The session cookie is in the browser's jar, C{HttpOnly}, C{Path=/},
        C{SameSite=Lax}, not C{Secure} over plain HTTP, and invisible to
        C{document.cookie}.
        """
        cookie = self.cookie("cookies")
        self.assertRegex(cookie["value"], r"\A[0-9a-f]{40}\Z")
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["path"], "/")
        self.assertEqual(cookie["sameSite"], "Lax")
        self.assertFalse(cookie["secure"])
        self.assertNotIn("CookieName", self.get("documentCookie"))
        self.assertEqual(self.get("documentCookieBefore"), "")

    def test_sameCookieAfterReload(self) -> None:
        """
        After a reload and a new Connect the browser keeps the same cookie
        value, and the daemon sees the same session open again.
        """
        before = self.cookie("cookies")["value"]
        after = self.cookie("cookiesAfterReload")["value"]
        self.assertEqual(before, after)
        self.assertEqual(self.get("daemonOutput").count(f"session opened: {before[:8]}"), 2)
        self.assertEqual(self.lines("outputReconnected")[-2:], ["==> ping", "<== pong"])
