"""
Tests for the short frame-reading path of L{GlueServerProtocol}
(C{_readFrames}) and the short send path: whatever bytes a client sends, in
whatever pieces, the connection delivers the same messages and writes the
same bytes as Autobahn's own frame parser and frame builder.
"""

from __future__ import annotations

import struct
from typing import Any, List, Tuple

from autobahn.websocket.protocol import PreparedMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.handlers_for_tests import Recorder
from tests.test_protocol import LeverTestCase, clientFrame, closeCode
from wsglue.levers.protocol import LeveredProtocol as GlueServerProtocol

MASKS = st.binary(min_size=4, max_size=4)


def maskedFrame(first: int, payload: bytes, mask: bytes, masked: bool = True) -> bytes:
    """
    A client frame with first byte C{first} (FIN, RSV, opcode).
    """
    n = len(payload)
    maskBit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, maskBit | n])
    elif n < 65536:
        head = bytes([first, maskBit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, maskBit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def texts(maxSize: int = 160) -> st.SearchStrategy[bytes]:
    # Recorder answers "echo X"; anything else is answered "ok"; "close"
    # closes the connection in the middle of what was read.
    return st.one_of(
        st.text(max_size=maxSize).map(lambda t: ("echo " + t).encode("utf-8")),
        st.text(max_size=maxSize).map(lambda t: t.encode("utf-8")),
        st.just(b"close"),
    )


@st.composite
def goodFrames(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["text", "binary", "fragments", "ping", "empty"]))
    mask = draw(MASKS)
    if kind == "text":
        return maskedFrame(0x81, draw(texts()), mask)
    if kind == "binary":
        return maskedFrame(0x82, draw(st.binary(max_size=160)), mask)
    if kind == "empty":
        return maskedFrame(0x81, b"", mask)
    if kind == "ping":
        return maskedFrame(0x89, draw(st.binary(max_size=125)), mask)
    payload = draw(texts(40))
    cut = draw(st.integers(0, len(payload)))
    return maskedFrame(0x01, payload[:cut], mask) + maskedFrame(0x80, payload[cut:], draw(MASKS))


@st.composite
def badFrames(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["utf8", "truncated-utf8", "rsv", "unmasked", "opcode", "continuation"]))
    mask = draw(MASKS)
    if kind == "utf8":
        return maskedFrame(0x81, b"a\xff" + draw(st.binary(max_size=20)), mask)
    if kind == "truncated-utf8":
        return maskedFrame(0x81, "\u20ac".encode()[:2], mask)
    if kind == "rsv":
        return maskedFrame(0x81 | draw(st.sampled_from([0x10, 0x20, 0x40])), b"ping", mask)
    if kind == "unmasked":
        return maskedFrame(0x81, b"ping", mask, masked=False)
    if kind == "opcode":
        return maskedFrame(0x80 | draw(st.sampled_from([3, 4, 5, 6, 7])), b"x", mask)
    return maskedFrame(0x80, b"x", mask)


@st.composite
def streams(draw: Any) -> Tuple[bytes, List[int]]:
    """
    Good frames, perhaps one bad frame and more frames after it, and the
    points at which the bytes are cut into reads.
    """
    data = b"".join(draw(st.lists(goodFrames(), max_size=12)))
    if draw(st.booleans()):
        data += draw(badFrames()) + b"".join(draw(st.lists(goodFrames(), max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return data, cuts


class ReadFramesTests(LeverTestCase):
    """
    The short path against Autobahn's parser, on the same bytes.
    """

    def feed(self, data: bytes, cuts: List[int], fast: bool, maxMessageSize: int) -> Any:
        factory = self.makeFactory(handlerFactory=Recorder, maxMessageSize=maxMessageSize)
        if not fast:
            # Autobahn as it comes: every frame through its parser, and the
            # connection's attributes as it set them.
            compact = GlueServerProtocol._compact
            GlueServerProtocol._compact = lambda self: None  # type: ignore[method-assign]
        try:
            proto, transport, _ = self.connect(factory=factory)
        finally:
            if not fast:
                GlueServerProtocol._compact = compact  # type: ignore[method-assign]
        self.assertTrue(proto._frameLimit)
        if not fast:
            proto._frameLimit = 0
        start = 0
        for cut in cuts + [len(data)]:
            proto.dataReceived(data[start:cut])
            start = cut
        handler = factory.handler.handler
        received = [e[3] for e in handler.events if e[0] == "received"]
        return received, transport.value(), proto.state

    @settings(
        max_examples=300,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(streams(), st.sampled_from([65536, 100, 5]))
    def test_sameAsAutobahn(self, stream: Tuple[bytes, List[int]], maxMessageSize: int) -> None:
        """
        Any mix of frames (text, binary, empty, fragmented, pings, too long
        for the limit, then perhaps a protocol error and more frames), cut
        into reads anywhere, gives the handler the same messages and the
        peer the same bytes, and leaves the connection in the same state,
        with the short path as without it.
        """
        data, cuts = stream
        self.assertEqual(
            self.feed(data, cuts, True, maxMessageSize),
            self.feed(data, cuts, False, maxMessageSize),
        )

    def test_manyFramesInOneRead(self) -> None:
        """
        Several frames in one read are all answered, in order, and a frame
        cut in two is answered once its second half arrives.
        """
        proto, transport, _ = self.connect()
        ping = clientFrame(1, b"ping")
        proto.dataReceived(ping + clientFrame(1, b"x") + ping + ping[:3])
        self.assertEqual(self.frames(transport), [(1, b"pong"), (1, b"ok"), (1, b"pong")])
        proto.dataReceived(ping[3:])
        self.assertEqual(self.frames(transport), [(1, b"pong")])

    def test_invalidUtf8AfterGoodFrames(self) -> None:
        """
        The good frames before an invalid text frame are answered; the
        invalid one closes the connection with 1007 and nothing after it
        is read.
        """
        proto, transport, _ = self.connect()
        ping = clientFrame(1, b"ping")
        proto.dataReceived(ping + clientFrame(1, b"\xed\xa0\x80") + ping)
        frames = self.frames(transport)
        self.assertEqual(frames[0], (1, b"pong"))
        self.assertEqual([(op, closeCode(p)) for op, p in frames[1:]], [(8, 1007)])

    def test_closedMidRead(self) -> None:
        """
        A message that closes the connection stops the short path: the
        frames after it in the same read are not delivered.
        """
        factory = self.makeFactory(handlerFactory=Recorder)
        proto, transport, _ = self.connect(factory=factory)
        proto.dataReceived(clientFrame(1, b"echo a") + clientFrame(1, b"close") + clientFrame(1, b"echo b"))
        received = [e[3] for e in factory.handler.handler.events if e[0] == "received"]
        self.assertEqual(received, ["echo a", "close"])
        frames = self.frames(transport)
        self.assertEqual(frames[0], (1, b"echo: a"))
        self.assertEqual([(op, closeCode(p)) for op, p in frames[1:]], [(8, 4000)])

    def test_trafficAnswersPing(self) -> None:
        """
        A data frame read by the short path while a ping is unanswered
        keeps the peer, as a frame read by Autobahn does.
        """
        factory = self.makeFactory(pingInterval=5, pingTimeout=2)
        proto, transport, _ = self.connect(factory=factory)
        self.clock.advance(6)
        self.assertEqual([op for op, _ in self.frames(transport)], [9])
        proto.dataReceived(clientFrame(1, b"ping"))
        self.assertEqual(self.frames(transport), [(1, b"pong")])
        self.clock.advance(3)
        self.assertFalse(transport.disconnecting or transport.disconnected)

    def test_offWhenLoggingFrames(self) -> None:
        """
        With Autobahn's frame or octet logging on, every frame goes through
        Autobahn, so that it is logged.
        """
        for option in ("logFrames", "logOctets"):
            factory = self.makeFactory()
            setattr(factory, option, True)
            proto, transport, _ = self.connect(factory=factory)
            self.assertEqual(proto._frameLimit, 0, option)

    def test_offForSubclassHooks(self) -> None:
        """
        A subclass that overrides a message hook (here C{onMessage}) gets
        every frame through Autobahn, so that its hook is called.
        """
        seen: List[Any] = []

        class Hooked(GlueServerProtocol):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                seen.append(payload)

        factory = self.makeFactory()
        factory.protocol = Hooked
        proto, transport, _ = self.connect(factory=factory)
        self.assertEqual(proto._frameLimit, 0)
        proto.dataReceived(clientFrame(1, b"ping"))
        self.assertEqual(seen, [b"ping"])


class SendTests(LeverTestCase):
    """
    The short send path builds the frames Autobahn builds.
    """

    def test_sameFramesAsAutobahn(self) -> None:
        """
        C{send} of text from 0 to 300 bytes (both sides of the 126-byte
        header change) writes exactly Autobahn's frame for it.
        """
        proto, transport, _ = self.connect()
        for n in range(300):
            text = "\xe9" * (n // 2) + "x" * (n % 2)
            self.assertTrue(proto.send(text))
            expected = PreparedMessage(text.encode("utf-8"), False, False, True).payloadHybi
            self.assertEqual(transport.value(), expected, n)
            transport.clear()
