"""
The hostile-input suite: raw sockets against a real wsglue daemon (a child
process), sending what no polite client sends.

HTTP: random bytes instead of a handshake, truncated and oversized request
lines and headers, thousands of headers, a 64 KiB Cookie header.  WebSocket
frames, generated with hypothesis (seeded: C{derandomize=True}): bad
opcodes, reserved bits, unmasked frames, fragmented and oversized control
frames, 2^63 length fields, too-big frames, invalid UTF-8 (also split across
fragments), close frames with invalid codes or reasons, interleaved
fragments, binary messages, and arbitrary frame sequences.

For every case the server answers as RFC 6455 says (the close code, an HTTP
4xx, or dropping the connection), a fresh client gets C{pong} right after,
and the daemon never logs an unhandled error.

Hypothesis runs synchronously, so it runs in a thread with blocking sockets
(short timeouts) while the reactor keeps reading the daemon's output.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, FrozenSet, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import freePort, handshakeRequest, spawnDaemon

TIMEOUT = 3.0
MASK = b"\x37\xfa\x21\x3d"
# How many frame cases one CI run drives through the daemon.
FRAME_CASES = 1100
# Codes a server may legitimately close with (RFC 6455 7.4.1 and the
# registered application range).
VALID_CODES = frozenset([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011]) | frozenset(range(3000, 5000))
DROPPED = -1


def frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: Optional[int] = None,
) -> bytes:
    """
    One client-to-server frame.  C{length} overrides the length field (the
    payload sent stays C{payload}), to lie about sizes.
    """
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    maskBit = 0x80 if mask else 0
    if n <= 125:
        head += bytes([maskBit | n])
    elif n <= 0xFFFF:
        head += bytes([maskBit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([maskBit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def closeFrame(code: int = 1000, reason: bytes = b"") -> bytes:
    return frame(8, struct.pack("!H", code) + reason)


def opened(port: int) -> Tuple[socket.socket, bytes]:
    """
    A blocking socket that has completed the opening handshake, and any
    bytes received after the response headers.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(handshakeRequest(port))
    received = b""
    for _ in range(100):
        if b"\r\n\r\n" in received:
            break
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise AssertionError(f"handshake refused: {received[:200]!r}")
    return sock, rest


def parseFrames(data: bytes) -> Tuple[List[Tuple[int, bytes]], bytes]:
    """
    The complete server frames at the start of C{data}, and what is left.
    """
    frames = []
    while len(data) >= 2:
        opcode, n, i = data[0] & 0x0F, data[1] & 0x7F, 2
        if data[1] & 0x80:
            raise AssertionError("server sent a masked frame")
        if n == 126:
            if len(data) < 4:
                break
            n, i = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, i = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < i + n:
            break
        frames.append((opcode, data[i : i + n]))
        data = data[i + n :]
    return frames, data


def answer(sock: socket.socket, pending: bytes = b"") -> Tuple[List[Tuple[int, bytes]], int]:
    """
    Read server frames up to its close frame (or the end of the
    connection); then close our side.

    @return: the frames before the close, and the close code (1005 for a
        close frame without one, L{DROPPED} if the connection just ended).
    """
    frames: List[Tuple[int, bytes]] = []
    try:
        for _ in range(1000):
            got, pending = parseFrames(pending)
            for opcode, payload in got:
                if opcode == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return frames, code
                frames.append((opcode, payload))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return frames, DROPPED
            if not chunk:
                return frames, DROPPED
            pending += chunk
        raise AssertionError("no close after 1,000 reads")
    except socket.timeout:
        raise AssertionError(f"server neither closed nor dropped within {TIMEOUT}s: {frames!r}")
    finally:
        sock.close()


def assertPong(port: int) -> None:
    """
    A fresh client gets C{pong} for C{ping}.
    """
    sock, rest = opened(port)
    try:
        sock.sendall(frame(1, b"ping") + closeFrame())
        frames, code = answer(sock, rest)
    finally:
        sock.close()
    if (1, b"pong") not in frames or code != 1000:
        raise AssertionError(f"fresh client got {frames!r} and close {code}")


def httpAnswer(port: int, request: bytes, shutdown: bool = False) -> bytes:
    """
    Send C{request} instead of a handshake; return everything the server
    sent until it closed the connection.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    received = b""
    try:
        try:
            sock.sendall(request)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        for _ in range(1000):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received
    except socket.timeout:
        raise AssertionError(f"server did not close within {TIMEOUT}s: {received[:200]!r}")
    finally:
        sock.close()


def assertHttp4xxOrDrop(received: bytes) -> None:
    if received and not (received.startswith(b"HTTP/1.1 4") or received.startswith(b"HTTP/1.0 4")):
        raise AssertionError(f"expected a 4xx or nothing, got {received[:200]!r}")


# -- frame cases: (category, bytes after the handshake, allowed close codes,
#    whether a text reply must come first) ---------------------------------

Case = Tuple[str, bytes, FrozenSet[int], bool]
PROTOCOL_ERROR = frozenset([1002])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
INVALID_UTF8 = st.sampled_from(
    [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]
)


def splits(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return parts


def fragmented(parts: List[bytes]) -> bytes:
    out = b""
    for i, part in enumerate(parts):
        out += frame(1 if i == 0 else 0, part, fin=(i == len(parts) - 1))
    return out


@st.composite
def badOpcode(draw: Any) -> Case:
    opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
    return "bad opcode", frame(opcode, draw(st.binary(max_size=20))), PROTOCOL_ERROR, False


@st.composite
def reservedBits(draw: Any) -> Case:
    rsv = draw(st.integers(1, 7))
    opcode = draw(st.sampled_from([1, 2, 9]))
    payload = draw(TEXT).encode("utf-8")
    return "reserved bits", frame(opcode, payload, rsv=rsv), PROTOCOL_ERROR, False


@st.composite
def unmasked(draw: Any) -> Case:
    opcode = draw(st.sampled_from([1, 2, 9, 10]))
    payload = draw(TEXT).encode("utf-8")
    return "unmasked", frame(opcode, payload, mask=False), PROTOCOL_ERROR, False


@st.composite
def fragmentedControl(draw: Any) -> Case:
    opcode = draw(st.sampled_from([8, 9, 10]))
    payload = struct.pack("!H", 1000) if opcode == 8 else draw(st.binary(max_size=10))
    return "fragmented control", frame(opcode, payload, fin=False), PROTOCOL_ERROR, False


@st.composite
def longControl(draw: Any) -> Case:
    opcode = draw(st.sampled_from([8, 9, 10]))
    n = draw(st.integers(126, 400))
    payload = (struct.pack("!H", 1000) + b"x" * n)[:n] if opcode == 8 else b"x" * n
    return "control frame over 125 bytes", frame(opcode, payload), PROTOCOL_ERROR, False


@st.composite
def hugeLength(draw: Any) -> Case:
    n = draw(st.integers(2**63, 2**64 - 1))
    opcode = draw(st.sampled_from([1, 2]))
    return "length field >= 2^63", frame(opcode, b"abc", length=n), PROTOCOL_ERROR, False


@st.composite
def tooBig(draw: Any) -> Case:
    n = draw(st.integers(65537, 2**63 - 1))
    opcode = draw(st.sampled_from([1, 2]))
    return "frame over --max-message-size", frame(opcode, b"abc", length=n), frozenset([1009]), False


@st.composite
def invalidUtf8(draw: Any) -> Case:
    data = draw(TEXT).encode("utf-8") + draw(INVALID_UTF8) + draw(st.sampled_from([b"", b"tail", "é€".encode("utf-8")]))
    parts = splits(data, draw(st.lists(st.integers(0, 100), max_size=4)))
    return "invalid UTF-8", fragmented(parts), frozenset([1007]), False


@st.composite
def validSplitUtf8(draw: Any) -> Case:
    text = draw(TEXT) + draw(st.sampled_from(["é", "€", "😀", "ü€😀"]))
    parts = splits(text.encode("utf-8"), draw(st.lists(st.integers(0, 100), min_size=1, max_size=4)))
    return "valid UTF-8 split across fragments", fragmented(parts), frozenset([1000]), True


@st.composite
def badCloseCode(draw: Any) -> Case:
    code = draw(
        st.one_of(
            st.integers(0, 999),
            st.sampled_from([1004, 1005, 1006, 1015]),
            st.integers(1016, 2999),
            st.integers(5000, 65535),
        )
    )
    return "invalid close code", closeFrame(code), PROTOCOL_ERROR, False


@st.composite
def badCloseBody(draw: Any) -> Case:
    if draw(st.booleans()):
        return "close with one byte", frame(8, draw(st.binary(min_size=1, max_size=1))), PROTOCOL_ERROR, False
    reason = draw(TEXT).encode("utf-8") + draw(INVALID_UTF8)
    return "close reason not UTF-8", closeFrame(1000, reason[:120]), frozenset([1007]), False


@st.composite
def interleaved(draw: Any) -> Case:
    first, second = draw(TEXT).encode("utf-8"), draw(TEXT).encode("utf-8")
    if draw(st.booleans()):
        data = frame(0, first, fin=draw(st.booleans()))
        return "continuation without a start", data, PROTOCOL_ERROR, False
    start = draw(st.sampled_from([1, 2]))
    # A ping between the fragments is allowed; a new data frame is not.
    ping = frame(9, b"p") if draw(st.booleans()) else b""
    data = frame(start, first, fin=False) + ping + frame(draw(st.sampled_from([1, 2])), second)
    return "new message inside a fragmented one", data, PROTOCOL_ERROR, False


@st.composite
def binaryMessage(draw: Any) -> Case:
    return "binary message", frame(2, draw(st.binary(max_size=50))), frozenset([1003]), False


@st.composite
def arbitraryFrames(draw: Any) -> Case:
    data = b""
    for _ in range(draw(st.integers(1, 5))):
        data += frame(
            draw(st.integers(0, 15)),
            draw(st.binary(max_size=130)),
            fin=draw(st.booleans()),
            rsv=draw(st.integers(0, 7)),
            mask=draw(st.booleans()),
        )
    return "arbitrary frames", data, VALID_CODES | {1005, DROPPED}, False


FRAME_CASE = st.one_of(
    badOpcode(),
    reservedBits(),
    unmasked(),
    fragmentedControl(),
    longControl(),
    hugeLength(),
    tooBig(),
    invalidUtf8(),
    validSplitUtf8(),
    badCloseCode(),
    badCloseBody(),
    interleaved(),
    binaryMessage(),
    arbitraryFrames(),
)


def runFrameCases(port: int, seen: List[str]) -> None:
    """
    Drive L{FRAME_CASES} generated cases through the daemon on C{port}.
    """

    @settings(
        max_examples=FRAME_CASES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(FRAME_CASE)
    def check(case: Case) -> None:
        category, data, codes, replies = case
        seen.append(category)
        sock, rest = opened(port)
        try:
            sock.sendall(data + closeFrame())
        except (BrokenPipeError, ConnectionResetError):
            pass
        frames, code = answer(sock, rest)
        assert code in codes, f"{category}: close {code}, expected one of {sorted(codes)[:5]}; sent {data[:60]!r}"
        if replies:
            assert frames and frames[0][0] == 1, f"{category}: no reply before close: {frames!r}"
        assertPong(port)

    check()


class HostileTests(TestCase):
    """
    Hostile input against a real daemon; each test ends by checking that
    a fresh client still gets C{pong} and nothing unhandled was logged.
    """

    def setUp(self) -> Any:
        self.port = freePort()
        self.daemon = spawnDaemon(
            self,
            ["--port", f"tcp:{self.port}:interface=127.0.0.1", "--broadcast-interval", "0", "--handshake-timeout", "2"],
        )
        return self.daemon.waitForOutput("started websocket server at")

    def assertCleanLog(self) -> None:
        for bad in ("Unhandled", "Traceback"):
            self.assertNotIn(bad, self.daemon.output)

    @inlineCallbacks
    def inThread(self, f: Any, *args: Any) -> Any:
        result = yield threads.deferToThread(f, *args)
        yield threads.deferToThread(assertPong, self.port)
        self.assertCleanLog()
        return result

    @inlineCallbacks
    def test_generatedFrames(self) -> None:
        """
        At least 1,000 generated frame cases, every category among them,
        are each answered with the right close code (or a drop where any
        answer is right), and a fresh client gets C{pong} after each.
        """
        seen: List[str] = []
        yield self.inThread(runFrameCases, self.port, seen)
        self.assertGreaterEqual(len(seen), 1000)
        self.assertEqual(len(set(seen)), 16, sorted(set(seen)))

    @inlineCallbacks
    def test_randomBytesInsteadOfHandshake(self) -> None:
        """
        Random bytes (ended by a blank line) instead of a handshake get a
        4xx or a dropped connection.
        """

        @settings(
            max_examples=100, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(st.binary(min_size=1, max_size=2000))
        def check(data: bytes) -> None:
            assertHttp4xxOrDrop(httpAnswer(self.port, data + b"\r\n\r\n"))

        yield self.inThread(check)

    @inlineCallbacks
    def test_truncatedRequest(self) -> None:
        """
        A request line or headers cut short (then the end of the stream)
        are dropped without an answer or an error.
        """

        def check() -> None:
            full = handshakeRequest(self.port)
            for cut in (3, 9, 20, len(full) // 2, len(full) - 3):
                received = httpAnswer(self.port, full[:cut], shutdown=True)
                assert received == b"", received[:200]

        yield self.inThread(check)

    @inlineCallbacks
    def test_oversizedRequestLine(self) -> None:
        """
        A 20 KiB request line is answered 400 or dropped (the server closes
        with our bytes unread, so the kernel may reset before the 400 arrives).
        """
        request = b"GET /" + b"a" * 20480 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        received = yield self.inThread(httpAnswer, self.port, request)
        assertHttp4xxOrDrop(received)

    @inlineCallbacks
    def test_oversizedHeader(self) -> None:
        """
        A single 20 KiB header line in a handshake is answered 400 or
        dropped.
        """
        request = handshakeRequest(self.port, {"X-Big": "b" * 20480})
        received = yield self.inThread(httpAnswer, self.port, request)
        assertHttp4xxOrDrop(received)

    @inlineCallbacks
    def test_thousandsOfHeaders(self) -> None:
        """
        A handshake with 5,000 headers is answered 400 or dropped.
        """
        headers = {f"X-H{i}": "v" for i in range(5000)}
        received = yield self.inThread(httpAnswer, self.port, handshakeRequest(self.port, headers))
        assertHttp4xxOrDrop(received)

    @inlineCallbacks
    def test_hugeCookieHeader(self) -> None:
        """
        A handshake with a 64 KiB Cookie header is answered 400 or dropped.
        """
        cookie = "; ".join(f"c{i}={'x' * 60}" for i in range(1024))
        self.assertGreaterEqual(len(cookie), 65536)
        request = handshakeRequest(self.port, {"Cookie": cookie})
        received = yield self.inThread(httpAnswer, self.port, request)
        assertHttp4xxOrDrop(received)
