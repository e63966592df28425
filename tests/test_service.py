"""
Tests for L{wsglue.process.service}: L{describeAddress}, the URL of the start-up line
(SPEC section 9), and L{CollectorTuning}.
"""

from __future__ import annotations

import gc
import types
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, forceLevers, freePort, options, spawnDaemon
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

    def test_anyInterfaceIsLocalhost(self) -> None:
        """
        A port on every interface is named C{ws://localhost:PORT}.
        """
        port = _Port(IPv4Address("TCP", "0.0.0.0", 9998))
        self.assertEqual(describeAddress(port, False), "ws://localhost:9998")

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
