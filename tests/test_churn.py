"""
Churn: connect/close cycles against a real daemon leave nothing behind.
CI runs 1,000 cycles; C{python -m bench.churn --cycles 10000} runs the full
count with the same code.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from bench.churn import measure
from tests.common import freePort, spawnDaemon


class ChurnTests(TestCase):
    """
    Many connect/close cycles, several at a time, a quarter of them closing
    without a close frame and a quarter aborting mid-handshake.
    """

    @inlineCallbacks
    def test_thousandCyclesLeakNothing(self) -> None:
        """
        After 1,000 cycles the registry is empty (every session the daemon
        logged as opened it logged as closed), the daemon's open files are
        back to their baseline, its RSS grew less than 10 %, and it logged
        no unhandled error.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1", "--broadcast-interval", "0"])
        yield daemon.waitForOutput("started websocket server at")
        figures = yield measure(reactor, port, daemon.pid, lambda: daemon.output, cycles=1000, warmup=200, parallel=8)
        self.assertEqual(figures["cycles"], 1000)
        self.assertTrue(figures["registryEmpty"], figures)
        self.assertLessEqual(figures["filesAfter"], figures["filesBefore"], figures)
        self.assertLess(figures["rssGrowth"], 0.10, figures)
        self.assertNotIn("Traceback", daemon.output)
        self.assertNotIn("Unhandled", daemon.output)
