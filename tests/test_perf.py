"""
The performance measures keep behaviour intact: writes that go to the kernel
at once (L{wsglue.levers.fastwrite}) and what the protocol drops or skips once a
WebSocket is open.  How fast they are is measured by the bench
(C{python -m bench}), never here.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel

from tests.common import connect, forceLevers, serve, waitFor
from tests.handlers_for_tests import Recorder
from tests.test_protocol import LeverTestCase, clientFrame, closeCode
from wsglue.levers.fastwrite import ImmediateWriteServer, sendNow, useImmediateWrites
from wsglue.levers.protocol import LeveredProtocol as GlueServerProtocol
from wsglue.levers.protocol import _drained, _LazyPformat
from wsglue.web.front import WebSocketUpgrade


class _FakePort:
    _realPortNumber = 0


def _transport(testCase: Any, sendBuffer: int = 0) -> Any:
    """
    An L{ImmediateWriteServer} on one end of a real socket pair, on a
    L{MemoryReactor}, and the other end (non-blocking) to read from.
    """
    ours, theirs = socket.socketpair()
    testCase.addCleanup(ours.close)
    testCase.addCleanup(theirs.close)
    if sendBuffer:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer)
    theirs.setblocking(False)
    memory = MemoryReactor()
    transport = ImmediateWriteServer(ours, Protocol(), ("127.0.0.1", 1), _FakePort(), 0, memory)
    return transport, theirs, memory


def _readAll(sock: socket.socket) -> bytes:
    chunks: List[bytes] = []
    for _ in range(100000):
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class ImmediateWriteTests(SynchronousTestCase):
    """
    L{ImmediateWriteServer} sends at once when nothing is buffered and keeps
    Twisted's buffering (and its order) for the rest.
    """

    def test_writeReachesThePeerAtOnce(self) -> None:
        """
        A write on a transport with an empty buffer is in the peer's socket
        before the reactor runs, and the transport does not ask the reactor
        to tell it when it can write.
        """
        transport, theirs, memory = _transport(self)
        transport.write(b"hello")
        self.assertEqual(_readAll(theirs), b"hello")
        self.assertNotIn(transport, memory.getWriters())
        self.assertEqual(transport._tempDataLen, 0)

    def test_remainderIsBufferedInOrder(self) -> None:
        """
        What the kernel does not take is buffered; later writes queue behind
        it, and the peer receives everything in the order written.
        """
        transport, theirs, memory = _transport(self, sendBuffer=4096)
        big = bytes(range(256)) * 4096  # 1 MiB, more than the socket takes
        transport.write(big)
        self.assertIn(transport, memory.getWriters())
        buffered = transport._tempDataLen
        self.assertGreater(buffered, 0)
        transport.write(b"tail")
        self.assertEqual(transport._tempDataLen, buffered + 4)
        received = [_readAll(theirs)]
        for _ in range(100000):
            if transport not in memory.getWriters():
                break
            transport.doWrite()
            received.append(_readAll(theirs))
        received.append(_readAll(theirs))
        self.assertEqual(b"".join(received), big + b"tail")

    def test_writeSequenceSendsAllInOrder(self) -> None:
        """
        C{writeSequence} sends its pieces joined, in order.
        """
        transport, theirs, memory = _transport(self)
        transport.writeSequence([b"a", b"bc", b"d"])
        self.assertEqual(_readAll(theirs), b"abcd")

    def test_writeAfterCloseIsDropped(self) -> None:
        """
        Once the transport is no longer connected, writes are dropped as
        Twisted's own transport drops them.
        """
        transport, theirs, memory = _transport(self)
        transport.connected = False
        transport.write(b"late")
        self.assertEqual(_readAll(theirs), b"")


class _Answering(Protocol):
    """
    Answers each read with three writes, and records what the peer had
    received when each was made.
    """

    def __init__(self, theirs: socket.socket) -> None:
        self.theirs = theirs
        self.seenByPeer: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        for part in (b"reply:", data, b";ack"):
            self.transport.write(part)
            self.seenByPeer.append(_readAll(self.theirs))


class HeldWritesTests(SynchronousTestCase):
    """
    While the protocol handles one read, L{ImmediateWriteServer} holds its
    writes and sends them together when it returns: one C{send()} per read.
    """

    def _sentSegments(self, transport: Any) -> List[bytes]:
        sent: List[bytes] = []
        realSocket = transport.socket

        class Counting:
            def send(self, data: Any) -> int:
                sent.append(bytes(data))
                return int(realSocket.send(data))

            def __getattr__(self, name: str) -> Any:
                return getattr(realSocket, name)

        transport.socket = Counting()
        return sent

    def test_oneSendPerRead(self) -> None:
        """
        The writes a read causes leave in one C{send()}, in order, once the
        protocol has returned, not before.
        """
        transport, theirs, memory = _transport(self)
        protocol = _Answering(theirs)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        sent = self._sentSegments(transport)
        transport._dataReceived(b"ping")
        self.assertEqual(protocol.seenByPeer, [b"", b"", b""])
        self.assertEqual(sent, [b"reply:ping;ack"])
        self.assertEqual(_readAll(theirs), b"reply:ping;ack")
        self.assertNotIn(transport, memory.getWriters())

    def test_writesOutsideAReadAreImmediate(self) -> None:
        """
        Once the read is handled, a write goes to the kernel at once again.
        """
        transport, theirs, memory = _transport(self)
        protocol = _Answering(theirs)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        transport._dataReceived(b"x")
        _readAll(theirs)
        transport.write(b"later")
        self.assertEqual(_readAll(theirs), b"later")

    def test_heldWritesSentWhenTheProtocolRaises(self) -> None:
        """
        Writes made before the protocol raised still leave, and the error
        reaches Twisted as before.
        """
        transport, theirs, memory = _transport(self)

        class Failing(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"partial")
                raise ValueError("broken handler")

        transport.protocol = failing = Failing()
        failing.makeConnection(transport)
        self.assertRaises(ValueError, transport._dataReceived, b"x")
        self.assertEqual(_readAll(theirs), b"partial")

    def test_heldBehindBufferedData(self) -> None:
        """
        Held writes queue behind data the kernel had not taken yet.
        """
        transport, theirs, memory = _transport(self, sendBuffer=4096)

        class Writing(Protocol):
            def dataReceived(self, data: bytes) -> None:
                for part in (b"reply:", data, b";ack"):
                    self.transport.write(part)

        transport.protocol = writing = Writing()
        writing.makeConnection(transport)
        big = bytes(range(256)) * 4096
        transport.write(big)
        transport._dataReceived(b"q")
        received = [_readAll(theirs)]
        for _ in range(100000):
            if transport not in memory.getWriters():
                break
            transport.doWrite()
            received.append(_readAll(theirs))
        received.append(_readAll(theirs))
        self.assertEqual(b"".join(received), big + b"reply:q;ack")


class UseImmediateWritesTests(TestCase):
    """
    L{useImmediateWrites} switches TCP ports, and wsglue's listening port
    uses it.
    """

    def setUp(self) -> None:
        forceLevers(self)

    def test_tcpPortSwitched(self) -> None:
        """
        A listening TCP port builds L{ImmediateWriteServer} transports once
        switched; anything else is left alone.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertTrue(useImmediateWrites(port))
        self.assertIs(port.transport, ImmediateWriteServer)
        self.assertFalse(useImmediateWrites(object()))

    def test_serviceListensWithImmediateWrites(self) -> None:
        """
        The wsglue service's TCP port uses immediate writes.
        """
        running = serve(self)
        port = running.service.getServiceNamed("websocket").port
        self.assertIs(port.transport, ImmediateWriteServer)

    async def test_openConnectionTakesFastPath(self) -> None:
        """
        An open WebSocket of the service has C{TCP_NODELAY} set on its
        socket, and its sends take the protocol's fast path (the kernel
        took everything written so far).
        """
        running = serve(self)
        client = await connect(self, running.port)
        [conn] = list(running.registry.allConnections())
        self.assertIs(type(conn.transport), ImmediateWriteServer)
        self.assertTrue(_drained(conn.transport))
        self.assertTrue(conn.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        client.send("ping")
        self.assertEqual(await client.nextMessage(), "pong")


class SendNowTests(TestCase):
    """
    L{sendNow} hands what a plain TCP transport holds to the kernel at once.
    """

    async def _connected(self) -> Any:
        """
        A TCP client transport and the accepted socket at its other end.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1])
        client = await endpoint.connect(Factory.forProtocol(Protocol))
        transport = client.transport
        self.addCleanup(transport.abortConnection)
        peer, _ = listener.accept()
        self.addCleanup(peer.close)
        return transport, peer

    async def test_clientSendsAtOnce(self) -> None:
        """
        Bytes written to a TCP client transport wait for the reactor's next
        turn; after C{sendNow} they are in the peer's socket already, and
        the transport no longer waits to write.
        """
        transport, peer = await self._connected()
        peer.settimeout(5)
        transport.write(b"hello")
        self.assertIn(transport, reactor.getWriters())
        sendNow(transport)
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(peer.recv(100), b"hello")

    async def test_closingLeftToReactor(self) -> None:
        """
        A transport asked to close once its data is out is left to the
        reactor, which sends the data and then closes the connection.
        """
        transport, peer = await self._connected()
        transport.write(b"bye")
        transport.loseConnection()
        sendNow(transport)
        self.assertIn(transport, reactor.getWriters())
        peer.setblocking(False)
        received: List[bytes] = []

        def closed() -> bool:
            try:
                chunk = peer.recv(100)
            except BlockingIOError:
                return False
            received.append(chunk)
            return chunk == b""

        await waitFor(closed)
        self.assertEqual(b"".join(received), b"bye")

    def test_othersLeftAlone(self) -> None:
        """
        A transport that is not plain TCP, or holds nothing, is left as it
        is.
        """
        from twisted.internet.testing import StringTransport

        other = StringTransport()
        other.write(b"held")
        sendNow(other)
        self.assertEqual(other.value(), b"held")
        transport, theirs, memory = _transport(self)
        sendNow(transport)
        self.assertEqual(_readAll(theirs), b"")


class OpenConnectionTests(TestCase):
    """
    What the protocol drops once the WebSocket is open does not change what
    it does.
    """

    def setUp(self) -> None:
        forceLevers(self)

    async def test_handshakeStateDroppedAfterOpen(self) -> None:
        """
        An open connection no longer holds the handshake request and
        response, and still answers C{ping} with C{pong}.
        """
        running = serve(self)
        client = await connect(self, running.port, headers={"X-Padding": "x" * 1000})
        [conn] = list(running.registry.allConnections())
        for name in ("http_headers", "http_request_data", "http_response_data"):
            self.assertIsNone(getattr(conn, name), name)
        client.send("ping")
        self.assertEqual(await client.nextMessage(), "pong")

    async def test_httpChannelReleased(self) -> None:
        """
        Once the WebSocket takes the connection over from twisted.web, the
        HTTP channel is no longer the transport's producer, and the upgrade
        request it served is freed; the connection still works both ways.
        (A body header keeps the handshake on twisted.web's way; see
        tests.test_handover for the short way.)
        """
        running = serve(self)
        requests: List[Any] = []
        original = WebSocketUpgrade.render

        def render(resource: Any, request: Any) -> Any:
            requests.append(weakref.ref(request))
            return original(resource, request)

        self.patch(WebSocketUpgrade, "render", render)
        client = await connect(self, running.port, headers={"Content-Length": "0"})
        [conn] = list(running.registry.allConnections())
        self.assertNotIsInstance(conn.transport.producer, HTTPChannel)
        gc.collect()
        self.assertEqual(len(requests), 1)
        self.assertIsNone(requests[0]())
        client.send("ping")
        self.assertEqual(await client.nextMessage(), "pong")
        running.registry.send(conn.sid, "to you")
        self.assertEqual(await client.nextMessage(), "to you")


class CompactTests(LeverTestCase):
    """
    An open connection holds only what differs from its options class and
    Autobahn's initial values, and reads and sets them as before.
    """

    def test_ownDictionarySmall(self) -> None:
        """
        Neither the options nor the handshake state nor initial values stay
        in an open connection's own dictionary, but they read as before.
        """
        factory = self.makeFactory(maxMessageSize=1234, pingInterval=0)
        proto, transport, _ = self.connect(factory=factory)
        own = vars(proto)
        for name in GlueServerProtocol.CONFIG_ATTRS:
            self.assertNotIn(name, own)
            self.assertEqual(getattr(proto, name), getattr(factory, name), name)
        for name in ("http_headers", "http_request_data", "wasClean", "closedByMe"):
            self.assertNotIn(name, own)
        self.assertEqual(proto.maxMessagePayloadSize, 1234)
        self.assertFalse(proto.wasClean)
        self.assertIsNone(proto.http_headers)
        # Traffic counters, transport details and the UTF-8 validator are
        # not kept; Autobahn's own paths may still count, to no effect.
        for name in ("trafficStats", "_transport_details", "websocket_protocols", "utf8validator"):
            self.assertNotIn(name, own)
        proto.trafficStats.incomingOctetsWireLevel += 10
        self.assertEqual(proto.trafficStats.incomingOctetsWireLevel, 0)
        self.assertEqual(proto.websocket_protocols, ())
        self.assertLessEqual(len(own), 19, sorted(own))
        # The transport details and the validator are made when read.
        self.assertEqual(proto.transport_details.peer, "tcp4:127.0.0.1:50000")
        self.assertFalse(proto.transport_details.is_secure)
        self.assertTrue(proto.utf8validator.validate(b"ok")[0])
        self.assertIn("_transport_details", own)
        self.assertIn("utf8validator", own)

    def test_optionsClassShared(self) -> None:
        """
        Connections that got the same options share one options class, a
        subclass of the factory's protocol; a connection made after the
        factory's options change gets a class with the new values, and the
        older connection keeps its own.
        """
        factory = self.makeFactory(maxMessageSize=100, pingInterval=0)
        first, _, _ = self.connect(factory=factory)
        second, _, _ = self.connect(factory=factory)
        self.assertIs(type(first), type(second))
        self.assertTrue(issubclass(type(first), GlueServerProtocol))
        self.assertIsNot(type(first), GlueServerProtocol)
        factory.setProtocolOptions(maxMessagePayloadSize=200, maxFramePayloadSize=200)
        third, transport, _ = self.connect(factory=factory)
        self.assertIsNot(type(third), type(first))
        self.assertEqual(third.maxMessagePayloadSize, 200)
        self.assertEqual(first.maxMessagePayloadSize, 100)
        third.dataReceived(clientFrame(1, b"x" * 150))
        self.assertEqual(self.frames(transport), [(1, b"ok")])

    def test_setAgain(self) -> None:
        """
        Autobahn's closing handshake sets the flags it left at their
        initial values: they become the connection's own again, and the
        close is reported as clean.
        """
        factory = self.makeFactory(handlerFactory=Recorder, pingInterval=0)
        proto, transport, _ = self.connect(factory=factory)
        proto.dataReceived(clientFrame(1, b"close"))
        self.assertEqual([(op, closeCode(p)) for op, p in self.frames(transport)], [(8, 4000)])
        self.assertTrue(proto.closedByMe)
        self.assertIn("closedByMe", vars(proto))
        self.assertFalse(GlueServerProtocol.closedByMe)
        proto.dataReceived(clientFrame(8, struct.pack("!H", 4000)))
        self.assertTrue(proto.wasClean)


class LazyPformatTests(SynchronousTestCase):
    """
    The arguments Autobahn builds for its debug log lines are made lazy,
    not lost.
    """

    def test_formatsLikePformat(self) -> None:
        """
        Formatted, printed or repr'd, the lazy value is pformat's text.
        """
        value = [("autoPingInterval", 30), ("failByDrop", False)]
        lazy = _LazyPformat(value)
        from pprint import pformat

        self.assertIsInstance(lazy, str)
        self.assertEqual(str(lazy), pformat(value))
        self.assertEqual("{0}".format(lazy), pformat(value))
        self.assertEqual(repr(lazy), pformat(value))

    def test_debugArgumentsFormatLikeAutobahns(self) -> None:
        """
        The deferred C{hltype} and C{hlval} that Autobahn's modules now
        call give the same text as Autobahn's own, once formatted into a
        log line.
        """
        import autobahn.twisted.websocket as twistedModule
        import autobahn.websocket.protocol as protocolModule
        from autobahn.util import hltype, hlval
        from twisted.logger import formatEvent

        for module in (protocolModule, twistedModule):
            for deferred, original, value in (
                (module.hltype, hltype, GlueServerProtocol.onOpen),
                (module.hlval, hlval, "tcp4:127.0.0.1:5000"),
            ):
                event = {"log_format": "{func}: {x}", "func": deferred(value), "x": 1}
                self.assertEqual(formatEvent(event), f"{original(value)}: 1")
                self.assertEqual(str(deferred(value)), original(value))
