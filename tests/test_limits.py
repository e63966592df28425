"""
Tests for the connection and message limits: the L{Limits} logic in memory,
and what a client sees over real sockets when each limit bites.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import (
    connect,
    cookieValue,
    handshakeRequest,
    rawConnect,
    serve,
    waitFor,
)
from wsglue import limits as limitsModule
from wsglue.levers.fastwrite import bufferedBytes
from wsglue.limits import LOG_INTERVAL, Limits, TokenBucket
from wsglue.tap import Options


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket} allows a burst, then the rate.
    """

    def test_burstThenRefused(self) -> None:
        """
        A full bucket allows C{burst} events at once and refuses the next.
        """
        bucket = TokenBucket(5, 3, Clock())
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])

    def test_refillsAtRate(self) -> None:
        """
        An empty bucket gains C{rate} tokens per second, up to C{burst}.
        """
        clock = Clock()
        bucket = TokenBucket(2, 2, clock)
        bucket.take(), bucket.take()
        clock.advance(0.5)
        self.assertEqual([bucket.take(), bucket.take()], [True, False])
        clock.advance(100)
        self.assertEqual([bucket.take() for _ in range(3)], [True, True, False])


class LimitsTests(SynchronousTestCase):
    """
    L{Limits} admits connections, counts refusals and logs them sparingly.
    """

    def setUp(self) -> None:
        self.events: List[dict] = []
        self.patch(limitsModule, "_log", Logger(observer=self.events.append))

    def test_maxConnectionsRefusedWith503(self) -> None:
        """
        Above C{maxConnections} admitted connections, C{admit} says 503 and
        counts it; a release makes room again.
        """
        limits = Limits(maxConnections=2, clock=Clock())
        self.assertIsNone(limits.admit("10.0.0.1"))
        self.assertIsNone(limits.admit("10.0.0.2"))
        self.assertEqual(limits.admit("10.0.0.3"), (503, "server is full"))
        self.assertEqual(limits.counters["refused_max_connections"], 1)
        limits.release("10.0.0.1")
        self.assertIsNone(limits.admit("10.0.0.3"))

    def test_perIpRefusedWith429(self) -> None:
        """
        Above C{maxConnectionsPerIp} from one address, C{admit} says 429;
        other addresses are still admitted.
        """
        limits = Limits(maxConnectionsPerIp=1, clock=Clock())
        self.assertIsNone(limits.admit("10.0.0.1"))
        refusal = limits.admit("10.0.0.1")
        self.assertEqual(refusal[0], 429)
        self.assertIsNone(limits.admit("10.0.0.2"))
        self.assertEqual(limits.counters["refused_per_ip"], 1)

    def test_releaseForgetsAddress(self) -> None:
        """
        Once every connection of an address is released, nothing is kept
        for it (an attacker cycling addresses does not grow the table).
        """
        limits = Limits(clock=Clock())
        limits.admit("10.0.0.1")
        limits.admit("10.0.0.1")
        limits.release("10.0.0.1")
        self.assertEqual(limits.connectionsFrom("10.0.0.1"), 1)
        limits.release("10.0.0.1")
        self.assertEqual((limits._perIp, limits.connections), ({}, 0))

    def test_biteLogsOncePerInterval(self) -> None:
        """
        A limit that bites many times is logged once per L{LOG_INTERVAL},
        with how many times it bit since the last line; every bite counts.
        """
        clock = Clock()
        limits = Limits(clock=clock)
        for _ in range(100):
            limits.bite("closed_message_rate")
        clock.advance(LOG_INTERVAL)
        limits.bite("closed_message_rate")
        self.assertEqual(limits.counters["closed_message_rate"], 101)
        self.assertEqual([e["since"] for e in self.events], [1, 100])
        self.assertEqual(self.events[-1]["total"], 101)

    def test_messageBucketOff(self) -> None:
        """
        Without C{maxMessagesPerSecond} there is no bucket to ask.
        """
        self.assertIsNone(Limits(clock=Clock()).messageBucket())


class BufferedBytesTests(SynchronousTestCase):
    """
    L{bufferedBytes} reads a transport's unsent data.
    """

    def test_fileDescriptor(self) -> None:
        """
        For a L{FileDescriptor}, the joined buffer past C{offset} plus the
        pending writes count.
        """
        from twisted.internet.abstract import FileDescriptor
        from twisted.internet.testing import MemoryReactor

        fd = FileDescriptor(reactor=MemoryReactor())
        fd.connected = True
        fd.dataBuffer = b"x" * 100
        fd.offset = 40
        fd.write(b"y" * 7)
        self.assertEqual(bufferedBytes(fd), 67)

    def test_wrapper(self) -> None:
        """
        A wrapper's own held-back buffer adds to the transport below it.
        """
        from twisted.internet.abstract import FileDescriptor
        from twisted.internet.testing import MemoryReactor

        below = FileDescriptor(reactor=MemoryReactor())
        below.connected = True
        below.write(b"z" * 10)

        class Wrapper:
            _appSendBuffer = [b"abc", b"de"]
            transport = below

        self.assertEqual(bufferedBytes(Wrapper()), 15)


class OptionsTests(SynchronousTestCase):
    """
    The limit options and their defaults.
    """

    def test_defaults(self) -> None:
        """
        Limits are off by default except the per-session limit (32) and the
        send buffer (1 MiB).
        """
        o = Options()
        o.parseOptions([])
        self.assertEqual(
            [
                o[n]
                for n in (
                    "max-connections",
                    "max-connections-per-ip",
                    "max-connections-per-session",
                    "max-messages-per-second",
                    "max-send-buffer",
                    "handshake-timeout",
                )
            ],
            [0, 0, 32, 0, 1048576, 10.0],
        )

    def test_negativeRefused(self) -> None:
        """
        A negative limit is a UsageError naming the option.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--max-connections", "-1"])
        self.assertIn("--max-connections must be a whole number", str(exc))

    def test_notANumberRefused(self) -> None:
        """
        A limit that is not a number is a UsageError naming the option.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--max-send-buffer", "lots"])
        self.assertIn("--max-send-buffer", str(exc))
        self.assertIn("'lots'", str(exc))


def statusLine(received: bytes) -> bytes:
    return received.split(b"\r\n", 1)[0]


class LimitsEndToEndTests(TestCase):
    """
    Over real loopback sockets: what the client sees when a limit bites,
    and that other clients keep getting answers.
    """

    @inlineCallbacks
    def handshake(self, port: int, headers: Any = None) -> Any:
        peer = yield rawConnect(self, port)
        peer.transport.write(handshakeRequest(port, headers))
        received = yield peer.waitForBytes(b"\r\n\r\n")
        return peer, statusLine(received)

    @inlineCallbacks
    def assertPong(self, client: Any) -> Any:
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_maxConnections503(self) -> None:
        """
        With C{--max-connections 2}, a third handshake gets HTTP 503 while
        the two open connections keep working; the counter says so.
        """
        running = serve(self, "--max-connections", "2")
        first = yield connect(self, running.port)
        second = yield connect(self, running.port)
        peer, status = yield self.handshake(running.port)
        self.assertIn(b" 503 ", status)
        yield peer.lost
        yield self.assertPong(first)
        yield self.assertPong(second)
        self.assertEqual(running.factory.limits.counters["refused_max_connections"], 1)

    @inlineCallbacks
    def test_maxConnectionsFreedOnClose(self) -> None:
        """
        When a connection closes, its place is free for a new handshake.
        """
        running = serve(self, "--max-connections", "1")
        first = yield connect(self, running.port)
        first.sendClose(1000)
        yield first.closed
        yield waitFor(lambda: running.factory.limits.connections == 0)
        second = yield connect(self, running.port)
        yield self.assertPong(second)

    @inlineCallbacks
    def test_perIp429(self) -> None:
        """
        With C{--max-connections-per-ip 1}, a second handshake from the
        same address gets HTTP 429.
        """
        running = serve(self, "--max-connections-per-ip", "1")
        first = yield connect(self, running.port)
        peer, status = yield self.handshake(running.port)
        self.assertIn(b" 429 ", status)
        yield self.assertPong(first)
        self.assertEqual(running.factory.limits.counters["refused_per_ip"], 1)
        # Counted under the peer's address, as the connection sees it.
        self.assertEqual(running.factory.limits.connectionsFrom("127.0.0.1"), 1)

    @inlineCallbacks
    def test_forwardedForIgnoredWithoutTrustProxy(self) -> None:
        """
        Without C{--trust-proxy}, C{X-Forwarded-For} does not change the
        address the per-IP limit counts.
        """
        running = serve(self, "--max-connections-per-ip", "1")
        yield connect(self, running.port, headers={"X-Forwarded-For": "10.0.0.1"})
        peer, status = yield self.handshake(running.port, {"X-Forwarded-For": "10.0.0.2"})
        self.assertIn(b" 429 ", status)

    @inlineCallbacks
    def test_forwardedForRightmostWithTrustProxy(self) -> None:
        """
        With C{--trust-proxy}, the rightmost C{X-Forwarded-For} entry is the
        address the per-IP limit counts: different clients behind the
        proxy are admitted, the same one is refused; entries the client
        wrote on the left do not help it.
        """
        running = serve(self, "--max-connections-per-ip", "1", "--trust-proxy")
        yield connect(self, running.port, headers={"X-Forwarded-For": "1.1.1.1, 10.0.0.1"})
        yield connect(self, running.port, headers={"X-Forwarded-For": "10.0.0.2"})
        peer, status = yield self.handshake(running.port, {"X-Forwarded-For": "9.9.9.9, 10.0.0.1"})
        self.assertIn(b" 429 ", status)
        self.assertEqual(running.factory.limits.connectionsFrom("10.0.0.2"), 1)

    @inlineCallbacks
    def test_perSessionClosesNewTab(self) -> None:
        """
        With C{--max-connections-per-session 2}, a third tab of the session
        opens and is closed with 1008; the first two keep working.
        """
        running = serve(self, "--max-connections-per-session", "2")
        first = yield connect(self, running.port)
        cookie = {"Cookie": "CookieName=" + cookieValue(first.setCookie)}
        second = yield connect(self, running.port, headers=cookie)
        third = yield connect(self, running.port, headers=cookie)
        code, reason = yield third.closed
        self.assertEqual(code, 1008)
        yield self.assertPong(first)
        yield self.assertPong(second)
        sid = running.registry.sessions()[0]
        self.assertEqual(len(running.registry.connections(sid)), 2)
        self.assertEqual(running.factory.limits.counters["closed_per_session"], 1)

    @inlineCallbacks
    def test_messageFloodClosed1008(self) -> None:
        """
        With C{--max-messages-per-second 5}, a client that sends 50
        messages at once is closed with 1008 after the burst; another
        client is unaffected.
        """
        running = serve(self, "--max-messages-per-second", "5")
        calm = yield connect(self, running.port)
        flooder = yield connect(self, running.port)
        for _ in range(50):
            flooder.send("ping")
        code, reason = yield flooder.closed
        self.assertEqual(code, 1008)
        answered = flooder.messages.pending
        self.assertTrue(1 <= len(answered) <= 6, answered)
        yield self.assertPong(calm)
        self.assertEqual(running.factory.limits.counters["closed_message_rate"], 1)

    @inlineCallbacks
    def test_messagesWithinRateAnswered(self) -> None:
        """
        A client that stays within the rate is answered every time.
        """
        running = serve(self, "--max-messages-per-second", "50")
        client = yield connect(self, running.port)
        for _ in range(20):
            yield self.assertPong(client)
        self.assertEqual(running.factory.limits.counters["closed_message_rate"], 0)


def openSockets() -> int:
    """
    How many sockets this process holds open.
    """
    import os

    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink("/proc/self/fd/" + name).startswith("socket:")
        except OSError:
            pass
    return count


class HandshakeDeadlineTests(SynchronousTestCase):
    """
    The site drops a peer that has not sent a complete request in time,
    however it trickles its bytes.
    """

    def channel(self, clock: Clock) -> Any:
        from twisted.internet.address import IPv4Address

        from tests.common import TCPLikeTransport, levered, options
        from wsglue.protocol import GlueServerFactory
        from wsglue.web.front import makeSite

        factory = GlueServerFactory(reactor=clock)
        site = makeSite(options()["static"], factory, timeout=60, handshakeTimeout=3, reactor=clock)
        levered(factory, site)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = TCPLikeTransport()
        transport.protocol = channel
        channel.makeConnection(transport)
        self.factory = factory
        return channel, transport

    def test_silentPeerDropped(self) -> None:
        """
        A peer that sends nothing is aborted at the deadline and counted.
        """
        clock = Clock()
        channel, transport = self.channel(clock)
        clock.advance(2.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.limits.counters["dropped_handshake_timeout"], 1)

    def test_tricklingPeerDropped(self) -> None:
        """
        A peer that sends a byte every half second (which keeps resetting
        an idle timeout) is still aborted at the deadline.
        """
        clock = Clock()
        channel, transport = self.channel(clock)
        for byte in b"GET / HTTP/1.1\r\n"[:7]:
            channel.dataReceived(bytes([byte]))
            clock.advance(0.5)
        self.assertTrue(transport.disconnected)

    def test_completeRequestNotDropped(self) -> None:
        """
        A complete request before the deadline is answered and the
        connection is not aborted when the deadline would have passed.
        """
        clock = Clock()
        channel, transport = self.channel(clock)
        channel.dataReceived(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(2.9)
        self.assertIn(b"404", transport.value())
        self.assertFalse(transport.disconnected)


class HalfOpenEndToEndTests(TestCase):
    """
    Many half-open connections over real sockets.
    """

    @inlineCallbacks
    def test_thousandHalfOpen(self) -> None:
        """
        1,000 connections that send nothing or half a request line do not
        stop a real client from connecting and getting C{pong}; after the
        handshake timeout they are all dropped and the open sockets are back
        to where they were.
        """
        running = serve(self, "--port", "tcp:0:interface=127.0.0.1:backlog=1024", "--handshake-timeout", "2")
        before = openSockets()
        peers: List[Any] = []
        for batch in range(10):
            connected = yield gatherResults([rawConnect(self, running.port) for _ in range(100)])
            for i, peer in enumerate(connected):
                if i % 2:
                    peer.transport.write(b"GET / HTT")
            peers.extend(connected)
        self.assertGreaterEqual(openSockets(), before + 1900)
        client = yield connect(self, running.port)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        yield waitFor(lambda: all(p.lost.called for p in peers), timeout=15)
        client.dropConnection(abort=True)
        yield client.closed
        self.assertEqual([p.received for p in peers if p.received], [])
        yield waitFor(lambda: openSockets() <= before, timeout=5).addErrback(
            lambda f: self.fail(f"{openSockets()} sockets open, {before} before")
        )
        self.assertEqual(running.factory.limits.counters["dropped_handshake_timeout"], 1000)
        yield waitFor(lambda: running.factory.limits.connections == 0)
