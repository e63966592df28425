"""
Tests for L{wsglue.process.service}: L{describeAddress}, the URL of the start-up line
(SPEC section 9), the closing line, and L{CollectorTuning}.
"""

from __future__ import annotations

import gc
import types
import weakref
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import RunningService, connect, forceLevers, freePort, options, spawnDaemon, waitFor
from wsglue.levers import collector
from wsglue.levers.collector import CollectorTuning
from wsglue.process.service import describeAddress
from wsglue.tap import makeService


class _Port:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getHost(self) -> Any:
        return self.address


class DescribeAddressTests(SynchronousTestCase):
    """
    What C{started websocket server at …} names.
    """

    def test_anyInterfaceNamed(self) -> None:
        """
        A port on every IPv4 interface is named by the address it is bound
        to, C{ws://0.0.0.0:PORT}, not as C{localhost}.
        """
        port = _Port(IPv4Address("TCP", "0.0.0.0", 9998))
        self.assertEqual(describeAddress(port, False), "ws://0.0.0.0:9998")

    def test_anyIPv6InterfaceNamed(self) -> None:
        """
        A port on every IPv6 interface is C{ws://[::]:PORT}.
        """
        port = _Port(IPv6Address("TCP", "::", 9998))
        self.assertEqual(describeAddress(port, False), "ws://[::]:9998")
        self.assertEqual(describeAddress(port, True), "wss://[::]:9998")

    def test_interface(self) -> None:
        """
        A port bound to one interface names it.
        """
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(describeAddress(port, False), "ws://127.0.0.1:8080")

    def test_tls(self) -> None:
        """
        A TLS port is C{wss://}.
        """
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8443))
        self.assertEqual(describeAddress(port, True), "wss://127.0.0.1:8443")

    def test_ipv6(self) -> None:
        """
        An IPv6 address is bracketed.
        """
        port = _Port(IPv6Address("TCP", "::1", 9998))
        self.assertEqual(describeAddress(port, False), "ws://[::1]:9998")

    def test_unixPathAsText(self) -> None:
        """
        A unix socket is named by its path as text, not as a bytes repr.
        """
        port = _Port(UNIXAddress(b"/run/wsglue.sock"))
        self.assertEqual(describeAddress(port, False), "ws+unix:///run/wsglue.sock")


class StopLineTests(TestCase):
    """
    The line the listening service logs as it closes the WebSockets.
    """

    def stopLines(self, clients: int) -> Any:
        running = RunningService()
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        @inlineCallbacks
        def run() -> Any:
            try:
                for _ in range(clients):
                    yield connect(self, running.port)
                yield waitFor(lambda: running.registry.connectionCount == clients)
            finally:
                yield running.stop()
            return [formatEvent(e) for e in events if "closing" in (formatEvent(e) or "")]

        return run()

    @inlineCallbacks
    def test_oneConnection(self) -> Any:
        """
        One WebSocket: C{closing 1 connection (1001)}.
        """
        self.assertEqual((yield self.stopLines(1)), ["closing 1 connection (1001)"])

    @inlineCallbacks
    def test_twoConnections(self) -> Any:
        """
        Two WebSockets: C{closing 2 connections (1001)}.
        """
        self.assertEqual((yield self.stopLines(2)), ["closing 2 connections (1001)"])


class CollectorTuningTests(SynchronousTestCase):
    """
    L{CollectorTuning} freezes what start-up made and raises the young
    generations' thresholds; garbage in cycles is still collected.
    """

    def setUp(self) -> None:
        thresholds = gc.get_threshold()
        enabled = gc.isenabled()

        def restore() -> None:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            if enabled:
                gc.enable()

        self.addCleanup(restore)

    def test_tuned(self) -> None:
        gc.unfreeze()
        CollectorTuning().startService()
        self.assertEqual(gc.get_threshold(), (5000, 20, 10))
        self.assertGreater(gc.get_freeze_count(), 1000)

    def test_cyclesCollected(self) -> None:
        """
        The collector still runs by itself: a reference cycle made after
        the tuning is freed as more objects are made, with no
        C{gc.collect()}.
        """
        CollectorTuning().startService()

        class Node:
            pass

        collected: list = []
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node, collected.append)
        del node
        self.assertIsNotNone(ref())  # a cycle: not freed by reference counting
        for _ in range(100_000):
            other = Node()
            other.self = other  # type: ignore[attr-defined]
            if ref() is None:
                break
        self.assertIsNone(ref())
        self.assertEqual(len(collected), 1)

    def test_otherInterpreters(self) -> None:
        """
        Where the C{gc} module has no C{freeze} (PyPy), nothing is changed.
        """
        calls = []
        self.patch(collector, "gc", types.SimpleNamespace(collect=lambda: calls.append("collect")))
        before = gc.get_threshold()
        CollectorTuning().startService()
        self.assertEqual((calls, gc.get_threshold()), ([], before))

    def test_underTwistdOnly(self) -> None:
        """
        L{makeService} adds it when twistd runs it (no reactor given), to
        the single process and to the parent of C{--workers}; not to a
        service built on a given reactor, as tests and embedders do.
        """
        forceLevers(self)
        for argv in [(), ("--workers", "2", "--redis", "redis://127.0.0.1:1/0")]:
            self.assertIsInstance(makeService(options(*argv)).getServiceNamed("collector"), CollectorTuning)
            with self.assertRaises(KeyError):
                makeService(options(*argv), reactor).getServiceNamed("collector")


class CollectorDaemonTests(TestCase):
    """
    A real C{twistd -n wsglue} runs with the collector tuned.
    """

    @inlineCallbacks
    def test_daemon(self) -> Any:
        forceLevers(self)
        port = freePort()
        daemon = spawnDaemon(
            self, ["--port", f"tcp:{port}:interface=127.0.0.1", "--handler", "tests.handlers_for_tests:Collector"]
        )
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        client.send("gc")
        answer = yield client.nextMessage()
        thresholds, frozen = answer.rsplit(" ", 1)
        self.assertEqual(thresholds, "5000 20 10")
        self.assertGreater(int(frozen.split("=")[1]), 1000)
        client.transport.loseConnection()
        yield daemon.stop()
