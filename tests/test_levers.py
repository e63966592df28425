"""
Tests for L{wsglue.levers}: how the speed levers are chosen and turned on,
that each one is really used (not only installed), that they stay off
outside the tested versions or when what they rely on is missing, and that
C{--no-levers} and C{WSGLUE_NO_LEVERS} run the plain path end to end.
"""

from __future__ import annotations

from typing import Any, Dict, List

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, freePort, options, spawnDaemon
from tests.test_protocol import Transport, clientFrame, handshakeBytes
from wsglue import levers as leversModule
from wsglue.levers import ENVIRONMENT_VARIABLE, Levers, versionProblem, versionTuple
from wsglue.levers.protocol import LeveredProtocol
from wsglue.protocol import GlueServerFactory, GlueServerProtocol
from wsglue.tap import makeService
from wsglue.web.front import DeadlineChannel, makeSite

PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def warnings(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("log_level") == LogLevel.warn]


class CaptureLog:
    """
    The log events emitted while it is in use.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)


class ChoiceTests(SynchronousTestCase):
    """
    L{Levers.choose}: on inside the tested versions, off with C{--no-levers},
    C{WSGLUE_NO_LEVERS=1} or untested versions.
    """

    def setUp(self) -> None:
        self.patch(Levers, "_current", None)

    def test_onInsideTestedVersions(self) -> None:
        """
        With the installed (tested) versions and nothing turning them off,
        the levers are on, without a warning.
        """
        log = CaptureLog(self)
        levers = Levers.choose(environ={})
        self.assertTrue(levers.on)
        self.assertEqual(warnings(log.events), [])
        self.assertIs(Levers.current(), levers)

    def test_offOutsideTestedVersions(self) -> None:
        """
        An Autobahn (or Twisted) outside the tested range turns every lever
        off, with one warning line naming the version and the range.
        """
        log = CaptureLog(self)
        levers = Levers.choose(environ={}, versions={"Twisted": "26.10.0", "autobahn": "27.1.0"})
        self.assertFalse(levers.on)
        [warning] = warnings(log.events)
        self.assertIn("autobahn 27.1.0 is outside the tested range", levers.why)
        self.assertIn("speed levers off", warning["log_format"])
        levers.apply(factory=GlueServerFactory(reactor=MemoryReactorClock()))
        self.assertEqual(levers.active, [])

    def test_versionProblem(self) -> None:
        """
        The range is inclusive below and exclusive above.
        """
        floor = ".".join(map(str, leversModule.TESTED["Twisted"][0]))
        cap = ".".join(map(str, leversModule.TESTED["Twisted"][1]))
        autobahn = ".".join(map(str, leversModule.TESTED["autobahn"][0]))
        self.assertIsNone(versionProblem({"Twisted": floor, "autobahn": autobahn}))
        self.assertIsNotNone(versionProblem({"Twisted": cap + ".0", "autobahn": autobahn}))
        self.assertIsNotNone(versionProblem({"Twisted": "23.10.0", "autobahn": autobahn}))
        self.assertEqual(versionTuple("26.10.0rc1"), (26, 10, 0))

    def test_offInEnvironment(self) -> None:
        """
        C{WSGLUE_NO_LEVERS=1} (or true, yes, on) turns them off, 0 leaves
        them on, anything else is an error.
        """
        for value in ("1", "true", "Yes", " on "):
            self.assertFalse(Levers.choose(environ={ENVIRONMENT_VARIABLE: value}).on, value)
        self.assertTrue(Levers.choose(environ={ENVIRONMENT_VARIABLE: "0"}).on)
        self.assertRaises(ValueError, Levers.choose, environ={ENVIRONMENT_VARIABLE: "maybe"})

    def test_noLeversOption(self) -> None:
        """
        C{--no-levers} turns them off; a bad C{WSGLUE_NO_LEVERS} is one clear
        option error.
        """
        self.assertFalse(options("--no-levers")["levers"].on)
        self.patch(leversModule.os, "environ", {ENVIRONMENT_VARIABLE: "maybe"})
        exc = self.assertRaises(UsageError, options)
        self.assertIn("WSGLUE_NO_LEVERS='maybe': use 1 or 0", str(exc))

    def test_missingAttributeTurnsOneLeverOff(self) -> None:
        """
        A lever whose precondition fails (here: what the masking lever
        replaces is gone) stays off with one warning line; the others
        still turn on.
        """
        import autobahn.websocket.protocol as autobahnProtocol

        log = CaptureLog(self)
        self.patch(autobahnProtocol, "create_xor_masker", None)
        del autobahnProtocol.create_xor_masker
        levers = Levers(True)
        levers.apply(factory=GlueServerFactory(reactor=MemoryReactorClock()))
        self.assertNotIn("masking", levers.active)
        self.assertIn("connection", levers.active)
        [warning] = warnings(log.events)
        self.assertEqual(warning["name"], "masking")
        self.assertIn("create_xor_masker", warning["problem"])


class ServiceTests(TestCase):
    """
    C{makeService} turns the levers on, or leaves the plain path.
    """

    def build(self, *argv: str) -> Any:
        return makeService(options("--port", "tcp:0:interface=127.0.0.1", *argv), MemoryReactorClock())

    def test_leversApplied(self) -> None:
        """
        With the levers, the factory builds L{LeveredProtocol}s and the site
        starts connections as WebSockets.
        """
        service = self.build()
        if not service.levers.on:
            raise self.skipTest(service.levers.why)
        factory = service.factory
        self.assertTrue(issubclass(factory.protocol, LeveredProtocol))
        self.assertIn("front", service.levers.active)
        site = service.getServiceNamed("websocket").site
        self.assertIsInstance(site.buildProtocol(PEER), LeveredProtocol)

    def test_plainPath(self) -> None:
        """
        With C{--no-levers}, Autobahn's and Twisted's classes as they come:
        the plain protocol, and twisted.web's channel first.
        """
        service = self.build("--no-levers")
        self.assertEqual(service.levers.active, [])
        self.assertIs(service.factory.protocol, GlueServerProtocol)
        site = service.getServiceNamed("websocket").site
        channel = site.buildProtocol(PEER)
        self.assertIs(type(channel), DeadlineChannel)
        self.assertIs(type(service.factory.buildProtocol(PEER)), GlueServerProtocol)


class UsedTests(SynchronousTestCase):
    """
    The connection levers are used, not only installed: counted through
    Autobahn's own entry points, a common handshake and small frames skip
    them with the levers and go through them without.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.patch(txaio.config, "loop", self.clock)
        self.calls: Dict[str, int] = {"processHandshake": 0, "processData": 0}
        for name in self.calls:
            original = getattr(WebSocketServerProtocol, name)

            def counting(proto: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
                self.calls[_name] += 1
                return _original(proto, *args)

            self.patch(WebSocketServerProtocol, name, counting)

    def exchange(self, factory: GlueServerFactory) -> Transport:
        proto = factory.buildProtocol(PEER)
        transport = Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9998), peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(handshakeBytes({}))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        transport.clear()
        proto.dataReceived(clientFrame(1, b"ping"))
        self.assertIn(b"pong", transport.value())
        proto.connectionLost(Failure(ConnectionDone()))
        return transport

    def test_leversSkipAutobahnsParsers(self) -> None:
        """
        With the levers, neither Autobahn's handshake processing nor its
        frame parser runs for a common handshake and a small text frame.
        """
        factory = GlueServerFactory(reactor=self.clock)
        Levers(True).apply(factory=factory)
        self.exchange(factory)
        self.assertEqual(self.calls, {"processHandshake": 0, "processData": 0})

    def test_plainGoesThroughAutobahn(self) -> None:
        """
        On the plain path, both go through Autobahn.
        """
        self.exchange(GlueServerFactory(reactor=self.clock))
        self.assertEqual(self.calls["processHandshake"], 1)
        self.assertGreaterEqual(self.calls["processData"], 1)


class DaemonTests(TestCase):
    """
    A real daemon on the plain path, chosen by option or by environment.
    """

    timeout = 60

    @inlineCallbacks
    def check(self, args: List[str], env: Dict[str, str]) -> Any:
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1", *args], env=env)
        yield daemon.waitForOutput("started websocket server at")
        self.assertIn("speed levers off", daemon.output)
        client = yield connect(self, port)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        daemon.signal("TERM")
        self.assertEqual((yield client.closed)[0], 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)

    def test_noLeversOption(self) -> None:
        """
        C{twistd -n wsglue --no-levers} says so and serves.
        """
        return self.check(["--no-levers"], {})

    def test_environmentVariable(self) -> None:
        """
        C{WSGLUE_NO_LEVERS=1 twistd -n wsglue} says so and serves.
        """
        return self.check([], {ENVIRONMENT_VARIABLE: "1"})


class SiteTests(SynchronousTestCase):
    """
    The front lever needs the connection lever.
    """

    def test_frontNeedsConnectionLever(self) -> None:
        """
        Given only a site whose factory was not levered, the front lever
        stays off: it would hand first requests to a plain protocol.
        """
        factory = GlueServerFactory(reactor=MemoryReactorClock())
        site = makeSite(options()["static"], factory, handshakeTimeout=10)
        levers = Levers(True)
        levers.apply(site=site)
        self.assertNotIn("front", levers.active)
        self.assertIs(type(site.buildProtocol(PEER)), DeadlineChannel)
