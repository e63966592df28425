"""
Tests for the short way of an opening handshake (L{wsglue.web.front.DeadlineChannel}
hands it straight to the WebSocket protocol) and for everything that must
still go through twisted.web, in memory: a channel of the real site on a
L{StringTransport}, fed raw bytes.
"""

from __future__ import annotations

import os
from typing import Any, List, Tuple

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.common import TCPLikeTransport, handshakeRequest, withLevers
from tests.test_protocol import clientFrame, serverFrames
from wsglue.protocol import GlueServerFactory, GlueServerProtocol
from wsglue.web.front import DeadlineChannel, GlueRoot, makeSite

PEER = IPv4Address("TCP", "127.0.0.1", 50000)


Transport = TCPLikeTransport


class HandoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.patch(txaio.config, "loop", self.clock)
        static = self.mktemp()
        os.mkdir(static)
        with open(os.path.join(static, "index.html"), "wb") as f:
            f.write(b"<p>page</p>")
        self.factory = GlueServerFactory(reactor=self.clock, pingInterval=0)
        self.site = makeSite(static, self.factory, handshakeTimeout=10, reactor=self.clock)
        withLevers(self.factory, self.site)
        self.routed: List[bytes] = []
        original = GlueRoot.getChildWithDefault

        def record(root: Any, name: bytes, request: Any) -> Any:
            self.routed.append(request.uri)
            return original(root, name, request)

        self.patch(GlueRoot, "getChildWithDefault", record)

    def send(self, *pieces: bytes) -> Tuple[StringTransport, bytes]:
        """
        Connect a channel of the site and feed it C{pieces}, one read each.
        """
        channel = self.site.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        for piece in pieces:
            # After the handover the transport delivers to the new protocol.
            transport.protocol.dataReceived(piece)
        self.addCleanup(self.clock.advance, 60)
        return transport, transport.value()

    def assertOpened(self, transport: StringTransport, response: bytes) -> GlueServerProtocol:
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response[:200])
        self.assertIn(b"Set-Cookie: CookieName=", response)
        [conn] = list(self.factory.registry.allConnections())
        transport.clear()
        conn.dataReceived(clientFrame(1, b"ping"))
        self.assertEqual(serverFrames(transport.value()), [(1, b"pong")])
        return conn

    def test_handshakeHandedOver(self) -> None:
        """
        A handshake in the common form opens the WebSocket without a
        twisted.web request, and the HTTP channel lets go of the transport:
        no timer of its own is left, only the WebSocket's.
        """
        transport, response = self.send(handshakeRequest(9998))
        self.assertEqual(self.routed, [])
        conn = self.assertOpened(transport, response)
        self.assertIs(transport.protocol, conn)
        self.assertIsNone(transport.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handshakeInPieces(self) -> None:
        """
        A handshake that arrives a byte at a time is handed over once it
        is complete.
        """
        request = handshakeRequest(9998, path="/?token=1")
        transport, response = self.send(*(request[i : i + 1] for i in range(len(request))))
        self.assertEqual(self.routed, [])
        self.assertOpened(transport, response)

    def test_framesRightAfterHandshake(self) -> None:
        """
        Frames that arrive in the same read as the handshake are handled
        once it is open.
        """
        transport, response = self.send(handshakeRequest(9998) + clientFrame(1, b"ping"))
        self.assertEqual(self.routed, [])
        head, _, rest = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(serverFrames(rest), [(1, b"pong")])

    def test_uncommonHandshakesThroughTwistedWeb(self) -> None:
        """
        Handshakes the short way leaves alone (a body header, more than 100
        headers, over 8 KiB, a folded header line) still open, through
        twisted.web.
        """
        many = {f"X-H{i}": "v" for i in range(101)}
        for request in (
            handshakeRequest(9998, {"Content-Length": "0"}),
            handshakeRequest(9998, many),
            handshakeRequest(9998, {"X-Pad": "p" * 9000}),
            handshakeRequest(9998, {"X-Folded": "a\r\n b"}),
        ):
            del self.routed[:]
            self.factory.registry = type(self.factory.registry)()
            transport, response = self.send(request)
            self.assertEqual(len(self.routed), 1, request[:80])
            self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response[:200])

    def test_otherRequestsThroughTwistedWeb(self) -> None:
        """
        A plain C{GET /} (the page), an upgrade to another path, and bytes
        that are not HTTP go to twisted.web, which answers them.
        """
        # (Over a socket the page itself is checked by tests.test_web.)
        transport, response = self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(response.startswith(b"HTTP/1.1 101"))
        self.assertEqual(self.routed, [b"/"])
        transport, response = self.send(handshakeRequest(9998, path="/elsewhere"))
        self.assertTrue(response.startswith(b"HTTP/1.1 404 "), response[:100])
        transport, response = self.send(b"\x16\x03\x01" + b"\x00" * 300 + b"\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response[:100])
        self.assertEqual(len(self.routed), 2)
        self.assertEqual(list(self.factory.registry.allConnections()), [])

    def test_incompleteHandshakeDeadline(self) -> None:
        """
        A handshake that never completes is still dropped at the handshake
        deadline.
        """
        transport, response = self.send(handshakeRequest(9998)[:40])
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_twistedWebStartsForHTTPOnly(self) -> None:
        """
        Until the first request shows what it is, only the handshake
        deadline runs; twisted.web's channel (its idle timer, and itself as
        the transport's producer) starts for a request that is not a
        handshake.
        """
        channel = self.site.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        self.addCleanup(self.clock.advance, 60)
        self.assertIsNone(transport.producer)
        [deadline] = self.clock.getDelayedCalls()
        self.assertEqual(deadline.getTime(), 10)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIsInstance(transport.protocol, DeadlineChannel)
        self.assertIs(transport.producer, transport.protocol)
        # (The page itself is checked over a socket by tests.test_web.)
        self.assertEqual(self.routed, [b"/"])

    def test_deadlineCountsFromConnecting(self) -> None:
        """
        A request handed to twisted.web keeps the deadline that started
        when the connection did: a body that trickles is dropped 10 seconds
        after connecting, not 10 seconds after the headers, and counted.
        """
        transport, _ = self.send()
        self.clock.advance(4)
        transport.protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        self.assertIsInstance(transport.protocol, DeadlineChannel)
        self.clock.advance(5.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.limits.counters["dropped_handshake_timeout"], 1)
        self.assertEqual(self.factory.countConnections, 0)

    def test_withoutDeadlineStartsAtOnce(self) -> None:
        """
        Without a handshake deadline, the channel starts at once (its idle
        timer bounds a silent peer), and still hands a handshake over,
        letting go of the transport.
        """
        self.site = makeSite(self.site.resource.static.path, self.factory, handshakeTimeout=None, reactor=self.clock)
        withLevers(self.factory, self.site)
        channel = self.site.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        self.addCleanup(self.clock.advance, 60)
        self.assertIs(transport.producer, channel)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        channel.dataReceived(handshakeRequest(9998))
        self.assertOpened(transport, transport.value())
        self.assertIsNone(transport.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leavesBeforeRequest(self) -> None:
        """
        A peer that connects and leaves without a byte (a health check, a
        port scan) leaves no timer behind, twisted.web never started.
        """
        channel = self.site.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(transport.value(), b"")
