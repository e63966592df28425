"""
Tests for L{wsglue.protocol}, in memory: a L{GlueServerProtocol} built by its
factory, connected to a L{StringTransport}, fed raw handshake and frame bytes;
the tests read the bytes it writes.  Timers run on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import gc
import re
import struct
import weakref
from typing import Any, Dict, List, Optional, Tuple

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from tests.common import levered, makeCertificate, options, withLevers
from tests.handlers_for_tests import Recorder
from tests.test_registry import FakeConnection
from wsglue.cookies import SessionCookies
from wsglue.origin import OriginPolicy
from wsglue.protocol import GlueServerFactory, GlueServerProtocol, forLog
from wsglue.tap import makeService

GOOD = "0123456789abcdef0123456789abcdef01234567"
HOST = "127.0.0.1:9998"
SET_COOKIE = re.compile(
    r"^Set-Cookie: CookieName=([0-9a-f]{40}); Path=/; HttpOnly; SameSite=Lax(; Secure)?\r$",
    re.MULTILINE,
)


def handshakeBytes(headers: Dict[str, str]) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def clientFrame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """
    A masked client-to-server frame.
    """
    mask = b"\x12\x34\x56\x78"
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def serverFrames(data: bytes) -> List[Tuple[int, bytes]]:
    """
    Split unmasked server frames into (opcode, payload) pairs.
    """
    frames = []
    while data:
        opcode = data[0] & 0x0F
        if data[1] & 0x80:
            raise AssertionError("server frames must not be masked")
        n, offset = data[1] & 0x7F, 2
        if n == 126:
            n, offset = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset : offset + n]))
        data = data[offset + n :]
    return frames


def closeCode(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]


class Transport(StringTransport):
    """
    A L{StringTransport} that, like a real transport, lets a protocol
    unregister a producer it never registered (Autobahn does when it drops
    a connection).
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class RawClient(Protocol):
    """
    Sends an opening handshake and keeps what comes back.
    """

    def __init__(self, headers: Dict[str, str]) -> None:
        self.headers = headers
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(handshakeBytes(self.headers))

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ProtocolTestCase(SynchronousTestCase):
    """
    Builds factories and protocols on a L{MemoryReactorClock}; Autobahn's
    timers (which go through txaio) run on the same clock.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.patch(txaio.config, "loop", self.clock)
        self.factory = self.makeFactory()

    def makeFactory(self, **kwargs: Any) -> GlueServerFactory:
        return levered(GlueServerFactory(reactor=self.clock, **kwargs))

    def connect(
        self,
        headers: Optional[Dict[str, str]] = None,
        factory: Optional[GlueServerFactory] = None,
    ) -> Tuple[GlueServerProtocol, StringTransport, str]:
        """
        Connect a protocol, send the opening handshake, and return the
        protocol, its transport and the HTTP response it wrote.
        """
        factory = factory or self.factory
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        proto = factory.buildProtocol(peer)
        transport = Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9998), peerAddress=peer)
        proto.makeConnection(transport)
        self.addCleanup(self.disconnect, proto)
        proto.dataReceived(handshakeBytes(headers or {}))
        response = transport.value().decode("latin-1")
        transport.clear()
        return proto, transport, response

    def disconnect(self, proto: GlueServerProtocol) -> None:
        if proto.transport is not None and not getattr(proto, "_lost", False):
            proto._lost = True
            proto.connectionLost(Failure(ConnectionDone()))

    def frames(self, transport: StringTransport) -> List[Tuple[int, bytes]]:
        frames = serverFrames(transport.value())
        transport.clear()
        return frames


class HandshakeTests(ProtocolTestCase):
    """
    The opening handshake: the session cookie and the Origin check.
    """

    def test_noCookieGetsSetCookie(self) -> None:
        """
        Without a cookie the handshake succeeds and issues a new session in
        C{Set-Cookie} with C{Path=/; HttpOnly; SameSite=Lax} and no C{Secure}.
        """
        proto, transport, response = self.connect()
        self.assertTrue(response.startswith("HTTP/1.1 101 "), response)
        match = SET_COOKIE.search(response)
        self.assertIsNotNone(match, response)
        self.assertIsNone(match.group(2))
        self.assertEqual(proto.sid, match.group(1))
        self.assertEqual(self.factory.registry.sessions(), [proto.sid])

    def test_malformedCookieReplaced(self) -> None:
        """
        A malformed session cookie is replaced: a new id in C{Set-Cookie}.
        """
        for value in ("", "junk", GOOD.upper(), GOOD[:-1], GOOD + "0"):
            proto, transport, response = self.connect({"Cookie": f"CookieName={value}"})
            match = SET_COOKIE.search(response)
            self.assertIsNotNone(match, (value, response))
            self.assertNotEqual(match.group(1), GOOD)

    def test_oversizedCookieReplaced(self) -> None:
        """
        An oversized C{Cookie} header is not parsed; a new id is issued.
        """
        header = f"CookieName={GOOD}; pad=" + "x" * 9000
        proto, transport, response = self.connect({"Cookie": header})
        self.assertIsNotNone(SET_COOKIE.search(response), response[:300])
        self.assertNotEqual(proto.sid, GOOD)

    def test_wellFormedCookieKept(self) -> None:
        """
        A well-formed session cookie names the session: no C{Set-Cookie}.
        """
        proto, transport, response = self.connect({"Cookie": f"a=1; CookieName={GOOD}"})
        self.assertTrue(response.startswith("HTTP/1.1 101 "), response)
        self.assertNotIn("Set-Cookie", response)
        self.assertEqual(proto.sid, GOOD)
        self.assertEqual(self.factory.registry.sessions(), [GOOD])

    def test_cookieInFirstOfTwoHeaders(self) -> None:
        """
        With two C{Cookie} header lines, a well-formed session cookie in
        either names the session.
        """
        for first, second in ((f"CookieName={GOOD}", "other=1"), ("other=1", f"CookieName={GOOD}")):
            peer = IPv4Address("TCP", "127.0.0.1", 50000)
            proto = self.factory.buildProtocol(peer)
            transport = Transport(peerAddress=peer)
            proto.makeConnection(transport)
            self.addCleanup(self.disconnect, proto)
            request = handshakeBytes({"Cookie": first})[:-2] + f"Cookie: {second}\r\n\r\n".encode()
            proto.dataReceived(request)
            response = transport.value().decode("latin-1")
            self.assertTrue(response.startswith("HTTP/1.1 101 "), response)
            self.assertNotIn("Set-Cookie", response)
            self.assertEqual(proto.sid, GOOD)

    def test_quotedCookieKept(self) -> None:
        """
        A quoted well-formed cookie names the session: no C{Set-Cookie}.
        """
        proto, transport, response = self.connect({"Cookie": f'CookieName="{GOOD}"'})
        self.assertNotIn("Set-Cookie", response)
        self.assertEqual(proto.sid, GOOD)

    def test_customCookieName(self) -> None:
        """
        The cookie store's name is the one read and set.
        """
        factory = self.makeFactory(cookies=SessionCookies("sid"))
        proto, transport, response = self.connect({"Cookie": f"CookieName={GOOD}"}, factory=factory)
        self.assertIn("Set-Cookie: sid=", response)
        proto, transport, response = self.connect({"Cookie": f"sid={GOOD}"}, factory=factory)
        self.assertNotIn("Set-Cookie", response)

    def test_secureOverTLS(self) -> None:
        """
        Over TLS (the protocol's transport provides L{ISSLTransport}) the
        cookie is C{Secure} and an C{https} page origin is the same origin.
        """
        # Made with cryptography: Twisted's KeyPair.selfSignedCert needs
        # pyOpenSSL's X509Req, which pyOpenSSL 26.3 removed.
        keyPath, _, certPEM = makeCertificate(self.mktemp())
        with open(keyPath, "rb") as f:
            certificate = PrivateCertificate.loadPEM(f.read() + certPEM)
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        server = TLSMemoryBIOFactory(certificate.options(), False, self.factory, clock=self.clock).buildProtocol(
            address
        )
        client = RawClient({"Origin": f"https://{HOST}"})
        clientFactory = Factory.forProtocol(lambda: client)
        tlsClient = TLSMemoryBIOFactory(CertificateOptions(), True, clientFactory, clock=self.clock).buildProtocol(
            address
        )
        _, _, pump = connectedServerAndClient(lambda: server, lambda: tlsClient, clock=self.clock)
        pump.flush()
        self.addCleanup(self.disconnect, server.wrappedProtocol)
        response = client.received.decode("latin-1")
        self.assertTrue(ISSLTransport.providedBy(server.wrappedProtocol.transport))
        self.assertTrue(response.startswith("HTTP/1.1 101 "), response)
        match = SET_COOKIE.search(response)
        self.assertIsNotNone(match, response)
        self.assertEqual(match.group(2), "; Secure")

    def test_foreignOriginForbidden(self) -> None:
        """
        A foreign C{Origin} gets 403, no cookie, and no registration.
        """
        proto, transport, response = self.connect({"Origin": "http://evil.example"})
        self.assertTrue(response.startswith("HTTP/1.1 403 "), response)
        self.assertNotIn("Set-Cookie", response)
        self.assertEqual(len(self.factory.registry), 0)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_sameOriginAccepted(self) -> None:
        """
        The page's own C{Origin} is accepted.
        """
        proto, transport, response = self.connect({"Origin": f"http://{HOST}"})
        self.assertTrue(response.startswith("HTTP/1.1 101 "), response)

    def test_malformedOriginForbidden(self) -> None:
        """
        An C{Origin} that is not a URL is refused with a client error (Autobahn
        answers 400 before our check), not a server error or an upgrade.
        """
        proto, transport, response = self.connect({"Origin": "http://[::1"})
        self.assertTrue(response.startswith("HTTP/1.1 4"), response)
        self.assertEqual(len(self.factory.registry), 0)

    def test_allowedOriginPattern(self) -> None:
        """
        With C{--allowed-origin} patterns, a matching foreign origin is
        accepted and the page's own is not.
        """
        factory = self.makeFactory(origins=OriginPolicy(["https://*.example.com"]))
        proto, transport, response = self.connect({"Origin": "https://app.example.com"}, factory=factory)
        self.assertTrue(response.startswith("HTTP/1.1 101 "), response)
        proto, transport, response = self.connect({"Origin": f"http://{HOST}"}, factory=factory)
        self.assertTrue(response.startswith("HTTP/1.1 403 "), response)

    def test_handshakeTimeout(self) -> None:
        """
        A peer that never completes the opening handshake is dropped after
        the handshake timeout.
        """
        factory = self.makeFactory(handshakeTimeout=2)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = Transport()
        proto.makeConnection(transport)
        self.addCleanup(self.disconnect, proto)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(1)
        self.assertFalse(transport.disconnecting or transport.disconnected)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting or transport.disconnected)


class MessageTests(ProtocolTestCase):
    """
    Frames in, frames out.
    """

    def test_pingPong(self) -> None:
        """
        A text C{ping} frame is answered with a text C{pong} frame.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, b"ping"))
        self.assertEqual(self.frames(transport), [(1, b"pong")])

    def test_textOk(self) -> None:
        """
        Other text is answered C{ok}.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, "h\xe9llo".encode()))
        self.assertEqual(self.frames(transport), [(1, b"ok")])

    def test_fragmentedMessage(self) -> None:
        """
        A message in two fragments is one message.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, b"pi", fin=False) + clientFrame(0, b"ng"))
        self.assertEqual(self.frames(transport), [(1, b"pong")])

    def test_binaryClosed1003(self) -> None:
        """
        A binary frame is answered with a close frame, code 1003.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(2, b"\x00\x01"))
        frames = self.frames(transport)
        self.assertEqual([op for op, _ in frames], [8])
        self.assertEqual(closeCode(frames[0][1]), 1003)

    def test_invalidUtf8Closed1007(self) -> None:
        """
        A text frame that is not UTF-8 is answered with close code 1007.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, b"\xff\xfe"))
        frames = self.frames(transport)
        self.assertEqual([op for op, _ in frames], [8])
        self.assertEqual(closeCode(frames[0][1]), 1007)

    def test_oversizedClosed1009(self) -> None:
        """
        A message larger than C{maxMessageSize} is answered with close code
        1009, also when it comes in small fragments.
        """
        factory = self.makeFactory(maxMessageSize=100)
        proto, transport, _ = self.connect(factory=factory)
        proto.dataReceived(clientFrame(1, b"x" * 101))
        frames = self.frames(transport)
        self.assertEqual([(op, closeCode(p)) for op, p in frames], [(8, 1009)])
        proto, transport, _ = self.connect(factory=factory)
        proto.dataReceived(clientFrame(1, b"x" * 60, fin=False) + clientFrame(0, b"x" * 60))
        frames = self.frames(transport)
        self.assertEqual([(op, closeCode(p)) for op, p in frames], [(8, 1009)])

    def test_noTimerLeftAfterFailure(self) -> None:
        """
        Once a connection failed for invalid UTF-8 is lost, it leaves no
        timer behind (Autobahn's closing-handshake timer is cancelled).
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, b"\xff"))
        self.disconnect(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exactSizeAccepted(self) -> None:
        """
        A message of exactly C{maxMessageSize} bytes is handled.
        """
        factory = self.makeFactory(maxMessageSize=100)
        proto, transport, _ = self.connect(factory=factory)
        proto.dataReceived(clientFrame(1, b"x" * 100))
        self.assertEqual(self.frames(transport), [(1, b"ok")])

    def test_unmaskedClientFrameClosed1002(self) -> None:
        """
        An unmasked client frame is a protocol error: close code 1002.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(b"\x81\x04ping")
        frames = self.frames(transport)
        self.assertEqual([(op, closeCode(p)) for op, p in frames], [(8, 1002)])

    def test_registrySendText(self) -> None:
        """
        C{registry.send} of a C{str} writes a text frame.
        """
        proto, transport, _ = self.connect()
        self.assertEqual(self.factory.registry.send(proto.sid, "h\xe9"), 1)
        self.assertEqual(self.frames(transport), [(1, "h\xe9".encode())])

    def test_registrySendBinary(self) -> None:
        """
        C{registry.send} of C{bytes} writes a binary frame.
        """
        proto, transport, _ = self.connect()
        self.assertEqual(self.factory.registry.send(proto.sid, b"\x00\xff"), 1)
        self.assertEqual(self.frames(transport), [(2, b"\x00\xff")])

    def test_registrySendTwoTabs(self) -> None:
        """
        C{registry.send} reaches both connections of one session, with the
        frame type kept (the prepared-message path).
        """
        one, t1, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        two, t2, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        self.assertEqual(self.factory.registry.send(GOOD, b"\x01"), 2)
        self.assertEqual(self.factory.registry.send(GOOD, "t"), 2)
        self.assertEqual(self.frames(t1), [(2, b"\x01"), (1, b"t")])
        self.assertEqual(self.frames(t2), [(2, b"\x01"), (1, b"t")])

    def test_broadcast(self) -> None:
        """
        C{registry.broadcast} writes the same text frame to every connection.
        """
        one, t1, _ = self.connect()
        two, t2, _ = self.connect()
        self.assertEqual(self.factory.registry.broadcast("notify"), 2)
        self.assertEqual(self.frames(t1), [(1, b"notify")])
        self.assertEqual(self.frames(t2), [(1, b"notify")])

    def test_sendNotOpen(self) -> None:
        """
        C{conn.send} on a connection that has not opened sends nothing and
        says so.
        """
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = Transport()
        proto.makeConnection(transport)
        self.addCleanup(self.disconnect, proto)
        self.assertFalse(proto.send("x"))
        self.assertEqual(transport.value(), b"")

    def test_sendWrongType(self) -> None:
        """
        C{conn.send} of something that is neither C{str} nor C{bytes} is a
        L{TypeError}.
        """
        proto, transport, _ = self.connect()
        self.assertRaises(TypeError, proto.send, 42)

    def test_connClose(self) -> None:
        """
        C{conn.close(code, reason)} sends a close frame with that code and
        reason.
        """
        proto, transport, _ = self.connect()
        proto.close(4000, "bye")
        self.assertEqual(self.frames(transport), [(8, b"\x0f\xa0bye")])


class ClosedConnectionFreedTests(ProtocolTestCase):
    """
    A closed connection is freed by reference counting, without waiting
    for the cyclic garbage collector.
    """

    def closeOne(self, data: bytes) -> Any:
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        proto = self.factory.buildProtocol(peer)
        transport = Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9998), peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(handshakeBytes({}))
        proto.dataReceived(data)
        proto.connectionLost(Failure(ConnectionDone()))
        # Timers Autobahn set for the connection hold it until they run.
        for call in list(self.clock.getDelayedCalls()):
            call.cancel()
        return weakref.ref(proto)

    def test_freedWithoutCollector(self) -> None:
        """
        After a clean close and after a client's own close, nothing holds
        the connection once the test lets go of it: no cycle through the
        C{is_closed} Deferred Autobahn fires with the connection.
        """
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        self.addCleanup(lambda: enabled and gc.enable())
        for data in (b"", clientFrame(8, struct.pack("!H", 1000))):
            ref = self.closeOne(data)
            self.assertIsNone(ref(), gc.get_referrers(ref()) if ref() is not None else None)

    def test_isClosedReadAfterClose(self) -> None:
        """
        C{is_closed} read after the connection closed is a fired Deferred,
        as Autobahn's is.
        """
        proto, transport, _ = self.connect()
        proto.connectionLost(Failure(ConnectionDone()))
        result: List[Any] = []
        proto.is_closed.addCallback(result.append)
        self.assertEqual(result, [proto])


class LifecycleTests(ProtocolTestCase):
    """
    Registration, the handler's calls, and the auto-ping.
    """

    def setUp(self) -> None:
        ProtocolTestCase.setUp(self)
        self.factory = self.makeFactory(handlerFactory=Recorder)
        self.handler = self.factory.handler.handler

    def test_openedRegistersAndCallsHandler(self) -> None:
        """
        Once open, the connection is registered under its session and the
        handler's C{opened} is called with it.
        """
        proto, transport, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        self.assertEqual(self.factory.registry.connections(GOOD), [proto])
        self.assertEqual(self.handler.events, [("opened", GOOD, proto)])

    def test_closedUnregistersAndCallsHandler(self) -> None:
        """
        When the connection is lost it is unregistered, the session is gone
        with its last connection, and the handler's C{closed} is called.
        """
        proto, transport, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        self.disconnect(proto)
        self.assertNotIn(GOOD, self.factory.registry)
        self.assertEqual(self.handler.events[-1], ("closed", GOOD, proto))

    def test_twoTabsOneCloses(self) -> None:
        """
        Two connections with the same cookie share the session; when one is
        lost the other stays registered.
        """
        one, t1, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        two, t2, _ = self.connect({"Cookie": f"CookieName={GOOD}"})
        self.assertEqual(self.factory.registry.connections(GOOD), [one, two])
        self.disconnect(one)
        self.assertEqual(self.factory.registry.connections(GOOD), [two])

    def test_refusedNeverRegistered(self) -> None:
        """
        A refused handshake calls no handler method and registers nothing.
        """
        self.connect({"Origin": "http://evil.example"})
        self.assertEqual(self.handler.events, [])
        self.assertEqual(self.factory.registry.connectionCount, 0)

    def test_receivedGetsTextAndBytes(self) -> None:
        """
        The handler gets C{str} for a text frame and C{bytes} for a binary
        one, and its return value goes back on the connection.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(clientFrame(1, b"echo hi") + clientFrame(2, b"\x01\x02"))
        self.assertEqual([e[3] for e in self.handler.events if e[0] == "received"], ["echo hi", b"\x01\x02"])
        self.assertEqual(self.frames(transport), [(1, b"echo: hi"), (2, b"\x02\x01")])

    def test_autoPing(self) -> None:
        """
        With C{pingInterval}, the server pings an idle peer; one that does
        not answer within C{pingTimeout} is dropped.
        """
        factory = self.makeFactory(pingInterval=5, pingTimeout=2)
        proto, transport, _ = self.connect(factory=factory)
        self.clock.advance(6)
        self.assertEqual([op for op, _ in self.frames(transport)], [9])
        self.assertFalse(transport.disconnecting or transport.disconnected)
        self.clock.advance(3)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_autoPingSubSecond(self) -> None:
        """
        With the timer lever, sub-second ping interval and timeout are kept
        as given, not rounded to whole seconds: the ping goes at 0.5 s and
        the silent peer is dropped 0.5 s later, not before.  (On the plain
        path Autobahn's batched timer rounds them.)
        """
        factory = withLevers(GlueServerFactory(reactor=self.clock, pingInterval=0.5, pingTimeout=0.5))
        proto, transport, _ = self.connect(factory=factory)
        self.clock.advance(0.4)
        self.assertEqual(self.frames(transport), [])
        self.clock.advance(0.1)
        self.assertEqual([op for op, _ in self.frames(transport)], [9])
        self.clock.advance(0.4)
        self.assertFalse(transport.disconnecting or transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_autoPingAnswered(self) -> None:
        """
        A peer that answers the ping with a pong is kept.
        """
        factory = self.makeFactory(pingInterval=5, pingTimeout=2)
        proto, transport, _ = self.connect(factory=factory)
        self.clock.advance(6)
        ((op, payload),) = self.frames(transport)
        proto.dataReceived(clientFrame(10, payload))
        self.clock.advance(3)
        self.assertFalse(transport.disconnecting or transport.disconnected)


class LeverTestCase(ProtocolTestCase):
    """
    A L{ProtocolTestCase} whose factories have the speed levers on, whatever
    the suite runs with: for the tests of the levers themselves.
    """

    def makeFactory(self, **kwargs: Any) -> GlueServerFactory:
        return withLevers(GlueServerFactory(reactor=self.clock, **kwargs))


class LazyAutobahnStateTests(LeverTestCase):
    """
    With the connection lever, what Autobahn's C{__init__} gives every
    connection is made when first read, and reads as Autobahn's would.
    """

    def test_autobahnInitCovered(self) -> None:
        """
        Autobahn's C{__init__} sets exactly what L{GlueServerProtocol}
        makes when first read: anything it starts to set must be looked at.
        """
        from autobahn.websocket.protocol import WebSocketProtocol

        bare = GlueServerProtocol.__new__(GlueServerProtocol)
        WebSocketProtocol.__init__(bare)
        self.assertEqual(
            set(vars(bare)),
            {"is_open", "is_closed", "_valid_events", "_results", "_transport_details"},
        )
        fresh = self.factory.buildProtocol(None)
        self.assertEqual(set(vars(fresh)), {"factory"})

    def test_isOpenReadAfterOpen(self) -> None:
        """
        C{is_open} first read after the handshake has fired, with C{None}.
        """
        proto, transport, response = self.connect()
        self.assertNotIn("is_open", vars(proto))
        fired: List[Any] = []
        proto.is_open.addCallback(fired.append)
        self.assertEqual(fired, [None])

    def test_isOpenReadBeforeOpen(self) -> None:
        """
        C{is_open} read while the handshake is on fires when it completes,
        once.
        """
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        proto = self.factory.buildProtocol(peer)
        proto.makeConnection(Transport(peerAddress=peer))
        self.addCleanup(self.disconnect, proto)
        fired: List[Any] = []
        proto.is_open.addCallback(fired.append)
        proto.dataReceived(handshakeBytes({}))
        self.assertEqual(fired, [None])
        self.assertTrue(proto.is_open.called)

    def test_isOpenNotFiredWhenRefused(self) -> None:
        """
        A refused handshake never fires C{is_open}.
        """
        proto, transport, response = self.connect({"Origin": "http://evil.example"})
        self.assertTrue(response.startswith("HTTP/1.1 403"), response)
        self.assertFalse(proto.is_open.called)

    def test_isClosedFires(self) -> None:
        """
        C{is_closed} fires with the connection when it closes, whether it
        was read before or only after.
        """
        before, _, _ = self.connect()
        waiting: List[Any] = []
        before.is_closed.addCallback(waiting.append)
        after, _, _ = self.connect()
        self.assertEqual(waiting, [])
        for proto in (before, after):
            self.disconnect(proto)
        self.assertEqual(waiting, [before])
        self.assertTrue(after.is_closed.called)
        fired: List[Any] = []
        after.is_closed.addCallback(fired.append)
        self.assertEqual(fired, [after])

    def test_observableEvents(self) -> None:
        """
        Autobahn's observable API still works on a connection: a listener
        for C{message} is called when it fires, each connection keeps its
        own results, and other events are refused.
        """
        one, _, _ = self.connect()
        two, _, _ = self.connect()
        got: List[Any] = []
        one.on("message", lambda payload, is_binary: got.append(payload) or "seen")
        one.fire("message", b"hello", False)
        self.assertEqual(got, [b"hello"])
        self.assertIsNotNone(one._results["message"])
        self.assertIsNone(two._results["message"])
        self.assertRaises(Exception, one.on, "nonsense", lambda: None)


class BroadcastTimerTests(SynchronousTestCase):
    """
    The demo broadcast of L{makeService}, on a clock.
    """

    def service(self, *argv: str) -> Any:
        self.clock = MemoryReactorClock()
        self.patch(txaio.config, "loop", self.clock)
        service = makeService(options(*argv), self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_broadcastEveryInterval(self) -> None:
        """
        Every C{--broadcast-interval} seconds each connection gets the
        C{--broadcast-message}.
        """
        service = self.service("--broadcast-interval", "2", "--broadcast-message", "tick")
        conn = FakeConnection()
        service.factory.registry.add(GOOD, conn)
        self.clock.advance(1.9)
        self.assertEqual(conn.received(), [])
        self.clock.advance(0.1)
        self.assertEqual(conn.received(), [b"\x81\x04tick"])
        self.clock.advance(2)
        self.assertEqual(conn.received(), [b"\x81\x04tick"] * 2)

    def test_zeroIntervalOff(self) -> None:
        """
        C{--broadcast-interval 0} turns the demo broadcast off.
        """
        service = self.service("--broadcast-interval", "0")
        conn = FakeConnection()
        service.factory.registry.add(GOOD, conn)
        self.clock.advance(60)
        self.assertEqual(conn.received(), [])
        self.assertRaises(KeyError, service.getServiceNamed, "broadcast")


class ForLogTests(SynchronousTestCase):
    """
    L{forLog}: how C{--verbose} shows a message.
    """

    def test_textAsItIs(self) -> None:
        """
        Text appears without quotes, as SPEC section 9 shows (C{<== ping}).
        """
        self.assertEqual(forLog("ping"), "ping")
        self.assertEqual(forLog("h\xe9 ok"), "h\xe9 ok")

    def test_controlCharactersEscaped(self) -> None:
        """
        A newline or escape sequence cannot start a forged log line.
        """
        self.assertEqual(forLog("a\nsession opened: x\x1b"), "a\\nsession opened: x\\x1b")

    def test_long(self) -> None:
        """
        Long text is cut.
        """
        self.assertEqual(forLog("x" * 1000, limit=10), "x" * 10 + "...")

    def test_binary(self) -> None:
        """
        Binary messages appear as their length.
        """
        self.assertEqual(forLog(b"\x00\x01\x02"), "<3 bytes>")
