"""
Tests for the admin page (C{GET /admin}) and what feeds it
(C{GET /api/stats}): served without a key, with a strict content policy;
the numbers need a key; and in Chromium, the page lists a session a test
opened and its disconnect button closes that session's tabs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.api_client import KEYS, serveApi
from tests.common import HERE, CollectOutput, connect, cookieValue, waitFor
from wsglue.api.stats import statsOf
from wsglue.counters import Counters
from wsglue.registry import SessionRegistry

SCRIPT = os.path.join(HERE, "admin_check.py")


class StatsOfTests(SynchronousTestCase):
    """
    L{statsOf} adds up this process and the other workers.
    """

    def test_summed(self) -> None:
        """
        Connections, sessions and the message totals of the other workers
        are added to this process's.
        """
        counters = Counters()
        counters.received(3)
        counters.sent(5)
        others = [{"connections": 2, "sessions": 1, "counters": {"messages_received": 4, "messages_sent": 6}}]
        stats = statsOf(counters, SessionRegistry(), lambda: others, clock=lambda: 12.5)
        self.assertEqual(
            stats, {"connections": 2, "sessions": 1, "messages_received": 5, "messages_sent": 7, "time": 12.5}
        )


class AdminHttpTests(TestCase):
    """
    The page and the stats over HTTP.
    """

    @inlineCallbacks
    def test_pageWithoutKey(self) -> None:
        """
        C{/admin} is the page, without a key, with a content policy that
        allows only its own scripts; its script and style are served too.
        """
        api = serveApi(self)
        response, body = yield api.request("GET", "/admin", key=None)
        self.assertEqual(response.code, 200)
        self.assertIn(b"<title>wsglue admin</title>", body)
        policy = response.headers.getRawHeaders("content-security-policy")[0]
        self.assertIn("script-src 'self'", policy)
        self.assertIn("frame-ancestors 'none'", policy)
        response, body = yield api.request("GET", "/admin/admin.js", key=None)
        self.assertEqual(response.code, 200)
        self.assertIn(b"sessionStorage", body)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/javascript"))
        response, _ = yield api.request("GET", "/admin/admin.css", key=None)
        self.assertEqual(response.code, 200)
        response, _ = yield api.request("GET", "/admin/other", key=None)
        self.assertEqual(response.code, 404)
        response, _ = yield api.request("POST", "/admin", key=None)
        self.assertEqual(response.code, 405)

    @inlineCallbacks
    def test_statsNeedKey(self) -> None:
        """
        C{GET /api/stats} without a key is 401.
        """
        api = serveApi(self)
        response, _ = yield api.request("GET", "/api/stats", key=None)
        self.assertEqual(response.code, 401)

    @inlineCallbacks
    def test_stats(self) -> None:
        """
        C{GET /api/stats} counts the connections and sessions now and the
        messages so far.
        """
        api = serveApi(self)
        client = yield connect(self, api.port)
        yield waitFor(lambda: api.registry.connectionCount == 1)
        client.send("ping")
        yield client.nextMessage()
        status, stats, _ = yield api.json("GET", "/api/stats")
        self.assertEqual(status, 200)
        self.assertEqual((stats["connections"], stats["sessions"]), (1, 1))
        self.assertEqual((stats["messages_received"], stats["messages_sent"]), (1, 1))
        self.assertIsInstance(stats["time"], float)


class AdminBrowserTests(TestCase):
    """
    The page in Chromium (Playwright, in a child process).
    """

    timeout = 120

    @inlineCallbacks
    def test_listsAndDisconnects(self) -> None:
        """
        Given the key, the page lists a session this test opened (two
        tabs); its disconnect button closes both tabs with code 4000.  A
        wrong key is refused; the key is kept in sessionStorage; the page
        raises no script error.
        """
        api = serveApi(self)
        first = yield connect(self, api.port)
        sid = cookieValue(first.setCookie)
        second = yield connect(self, api.port, headers={"Cookie": f"CookieName={sid}"})
        folder = tempfile.mkdtemp(prefix="wsglue-admin-")
        screenshot = os.path.join(folder, "admin.png")
        report = yield runBrowser(self, [api.base, KEYS[1], sid, screenshot])
        self.assertIsNone(report["error"], report)
        self.assertEqual(
            report["steps"],
            [
                "asked for a key",
                "refused a wrong key",
                "listed the session",
                "took a screenshot",
                "the session went away",
            ],
        )
        self.assertTrue(report["stored"])
        self.assertEqual(report["numbers"], {"sessions": "1", "connections": "2"})
        self.assertEqual(report["pageErrors"], [])
        for tab in (first, second):
            code, _ = yield tab.closed
            self.assertEqual(code, 4000)
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        os.environ.get("WSGLUE_ADMIN_SCREENSHOT") and _keep(screenshot)


def _keep(path: str) -> None:
    import shutil

    shutil.copy(path, os.environ["WSGLUE_ADMIN_SCREENSHOT"])


@inlineCallbacks
def runBrowser(testCase: TestCase, args: Any) -> Any:
    collect = CollectOutput()
    transport = reactor.spawnProcess(
        collect, sys.executable, [sys.executable, SCRIPT, *args], env=dict(os.environ), path=HERE
    )

    def stop() -> Deferred:
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
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"no report (exit {code}): {collect.err.decode('utf-8', 'replace')[-2000:]}"}
