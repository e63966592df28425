"""
Tests for the quick connection setup and opening handshake of
L{GlueServerProtocol} (C{connectionMade}, C{_connectionMade},
C{processHandshake}): whatever request a client sends, the connection answers
with the same bytes, logs the same lines and ends in the same state as with
Autobahn's own, on a connection that copied its options as Autobahn's do.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from autobahn.twisted.websocket import WebSocketServerProtocol as AutobahnTwisted
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from tests.common import withLevers
from tests.test_protocol import GOOD, HOST, LeverTestCase, Transport
from wsglue.cookies import SessionCookies
from wsglue.levers.protocol import _COLD_DEFAULTS, _OPTIONS, _SHED, LeveredProtocol
from wsglue.origin import OriginPolicy
from wsglue.protocol import GlueServerFactory, GlueServerProtocol

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# What Chromium sent in the browser tests, less the cookie.
BROWSER = [
    ("Host", HOST),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0.0.0 Safari/537.36"),
    ("Upgrade", "websocket"),
    ("Origin", f"http://{HOST}"),
    ("Sec-WebSocket-Version", "13"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
]


class AutobahnHandshake(LeveredProtocol):
    """
    GlueServerProtocol with Autobahn's own connection setup and opening
    handshake.
    """

    __init__ = AutobahnProtocol.__init__
    connectionMade = AutobahnTwisted.connectionMade
    _connectionMade = AutobahnTwisted._connectionMade
    processHandshake = AutobahnTwisted.processHandshake
    _onOpen = AutobahnTwisted._onOpen


class CountingCookies(SessionCookies):
    """
    Session ids 1, 2, 3… so that two runs issue the same cookies.
    """

    issued = 0

    def issue(self) -> Tuple[str, str]:
        self.issued += 1
        sid = f"{self.issued:040x}"
        return sid, sid


def request(line: str, headers: List[Tuple[str, str]], tail: bytes = b"") -> bytes:
    return ("\r\n".join([line] + [f"{name}: {value}" for name, value in headers]) + "\r\n\r\n").encode("latin-1") + tail


LINE_VARIANTS = [
    "GET / HTTP/1.1",
    "GET /?a=1&b=%20 HTTP/1.1",
    "GET /ws HTTP/1.1",
    "GET /#frag HTTP/1.1",
    "GET /?a#b HTTP/1.1",
    "GET / HTTP/1.0",
    "POST / HTTP/1.1",
    "GET / HTTP/1.1 extra",
    "GET http://host/ HTTP/1.1",
]
LINES = st.sampled_from(LINE_VARIANTS)
# Each header: absent, or one of these values (two values: sent twice).
VARIANTS: Dict[str, List[Any]] = {
    "Host": [HOST, "localhost", "127.0.0.1:abc", "[::1]:9998", "[::1]", "h:80", (HOST, HOST)],
    "Upgrade": ["websocket", "WebSocket", "h2c, websocket", "foo", "", " WebSocket\t", "websockets"],
    "Connection": ["Upgrade", "keep-alive, Upgrade", "close", "upgrade", " UPGRADE ", "upgraded"],
    "Sec-WebSocket-Key": [
        KEY,
        " " + KEY,
        KEY[:-1],
        KEY[:-2] + "=x",
        "dGhlIHNhbXBsZSBub25jZQ!=",
        (KEY, KEY),
    ],
    "Sec-WebSocket-Version": ["13", " 13", "8", "12", "x", ("13", "13")],
    "Origin": [
        f"http://{HOST}",
        "http://evil.example",
        "null",
        "file://",
        "http://",
        "garbage",
        "https://[::1]:99",
        (f"http://{HOST}", f"http://{HOST}"),
    ],
    "Sec-WebSocket-Extensions": [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; bogus=1",
        "permessage-deflate; server_max_window_bits=99",
        "x-webkit-deflate-frame",
        "",
        ("permessage-deflate", "permessage-deflate"),
    ],
    "Sec-WebSocket-Protocol": ["chat", "a, a"],
    "Cookie": [f"CookieName={GOOD}", "CookieName=junk", "other=1", f"a=b; CookieName={GOOD}"],
    "X-Forwarded-For": ["10.0.0.1"],
    "User-Agent": ["test"],
}
# A browser's handshake has these; the rest are optional.
USUAL = ("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version")


@st.composite
def requests(draw: Any) -> bytes:
    """
    A good handshake with up to three things changed: a header dropped, sent
    twice or given another value (good or bad), another request line, bytes
    after the request.  Most bad requests are then bad in one way only, so
    each of Autobahn's checks is reached.
    """
    chosen: Dict[str, Any] = {name: VARIANTS[name][0] for name in USUAL}
    for name in VARIANTS:
        if name not in USUAL and draw(st.integers(0, 3)) == 0:
            chosen[name] = VARIANTS[name][0]
    line, tail = "GET / HTTP/1.1", b""
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(sorted(VARIANTS) + ["line", "tail"]))
        if change == "line":
            line = draw(LINES)
        elif change == "tail":
            tail = b"\x81\x80abcd"
        else:
            chosen[change] = draw(st.sampled_from(VARIANTS[change] + [None]))
    headers: List[Tuple[str, str]] = []
    for name, value in chosen.items():
        spelled = draw(st.sampled_from([name, name.lower(), name.upper()]))
        if value is not None:
            for one in value if isinstance(value, tuple) else (value,):
                headers.append((spelled, one))
    return request(line, draw(st.permutations(headers)), tail)


def plain(value: Any) -> Any:
    """
    C{value} if it is plain data, else the name of its type: two runs
    compare equal when they hold equal data and objects of the same kinds.
    """
    if isinstance(value, (bool, int, float, str, bytes, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, TransportDetails):
        return plain(value.marshal())
    return type(value).__name__


class HandshakeDifferentialTests(LeverTestCase):
    """
    The quick handshake against Autobahn's, on the same bytes.
    """

    maxDiff = None

    def run_(self, data: bytes, quick: bool, origins: OriginPolicy) -> Tuple[Dict[str, Any], Any]:
        """
        One connection of a fresh factory handed C{data}: what it wrote and
        logged and where it got to, and the connection itself.
        """
        factory = withLevers(
            GlueServerFactory(reactor=self.clock, cookies=CountingCookies(), origins=origins, pingInterval=5)
        )
        events: List[Dict[str, Any]] = []

        def observe(event: Dict[str, Any]) -> None:
            if event["log_level"] >= LogLevel.info:
                events.append(event)

        timers = len(self.clock.getDelayedCalls())
        globalLogPublisher.addObserver(observe)
        try:
            peer = IPv4Address("TCP", "127.0.0.1", 50000)
            if quick:
                proto = factory.buildProtocol(peer)
            else:
                # As Autobahn's factory builds it: the options get copied.
                proto = AutobahnHandshake()
                proto.factory = factory
            transport = Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9998), peerAddress=peer)
            proto.makeConnection(transport)
            proto.dataReceived(data)
        finally:
            globalLogPublisher.removeObserver(observe)
        outcome = {
            "written": transport.value(),
            "disconnecting": transport.disconnecting,
            "state": proto.state,
            "sid": proto.sid,
            "sessions": factory.registry.sessions(),
            "countConnections": factory.countConnections,
            "log": [(e.get("log_namespace"), e["log_format"]) for e in events],
            "timers": len(self.clock.getDelayedCalls()) - timers,
        }
        return outcome, proto

    def assertSame(self, data: bytes, origins: OriginPolicy = OriginPolicy()) -> Dict[str, Any]:
        """
        C{data} gets the same from the quick handshake as from Autobahn's:
        bytes written, log lines, state, registry, timers, and every
        attribute of the connection reading the same.
        """
        quick, mine = self.run_(data, True, origins)
        autobahn, theirs = self.run_(data, False, origins)
        try:
            self.assertEqual(quick, autobahn, data)
            # Everything either connection holds, and everything a compacted
            # one reads from its class, but the traffic counters: not kept
            # (they read 0).
            names = set(vars(mine)) | set(vars(theirs)) | set(_OPTIONS)
            names |= set(_COLD_DEFAULTS) | set(_SHED) | {"utf8validator"}
            names.discard("trafficStats")
            # The short path's own mark; what it stands for is whether
            # is_open has fired, compared below.
            names.discard("_opened")
            missing = object()
            self.assertEqual(
                {name: plain(getattr(mine, name, missing)) for name in names},
                {name: plain(getattr(theirs, name, missing)) for name in names},
                data,
            )
            self.assertEqual(
                (mine.is_open.called, mine.is_closed.called),
                (theirs.is_open.called, theirs.is_closed.called),
                data,
            )
        finally:
            for proto in (mine, theirs):
                if proto.transport is not None:
                    proto.connectionLost(Failure(ConnectionDone()))
            for call in self.clock.getDelayedCalls():
                call.cancel()
        return quick

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def test_sameAsAutobahn(self, data: bytes) -> None:
        """
        Any request, good or bad, gets the same answer, log lines and state.
        """
        self.assertSame(data)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def test_sameUnderOriginPolicy(self, data: bytes) -> None:
        """
        The same with an Origin allow-list, which refuses some with 403.
        """
        self.assertSame(data, OriginPolicy([f"http://{HOST}"]))

    def test_eachSingleChange(self) -> None:
        """
        Every single change to a good handshake (each header dropped, or
        given each of its values; each request line; bytes after it) gets
        the same answer, log lines and state.
        """
        good = {name: VARIANTS[name][0] for name in USUAL}
        changes: List[Tuple[str, Any]] = [("line", line) for line in LINE_VARIANTS]
        changes.append(("tail", b"\x81\x80abcd"))
        for name, values in VARIANTS.items():
            changes += [(name, value) for value in values + [None]]
        for name, value in changes:
            chosen = dict(good)
            line, tail = "GET / HTTP/1.1", b""
            if name == "line":
                line = value
            elif name == "tail":
                tail = value
            else:
                chosen[name] = value
            headers = [
                (header, one)
                for header, values in chosen.items()
                if values is not None
                for one in (values if isinstance(values, tuple) else (values,))
            ]
            self.assertSame(request(line, headers, tail))
            self.assertSame(request(line, BROWSER + headers[1:], tail))

    def test_browserHandshake(self) -> None:
        """
        A browser's handshake (extension offer and Origin included) is
        answered with 101, the same bytes as Autobahn's.
        """
        outcome = self.assertSame(request("GET / HTTP/1.1", BROWSER))
        self.assertTrue(outcome["written"].startswith(b"HTTP/1.1 101 "), outcome["written"])
        self.assertEqual(outcome["sessions"], [f"{1:040x}"])


class QuickPathTakenTests(LeverTestCase):
    """
    Which requests the quick path answers without Autobahn's handshake.
    """

    def setUp(self) -> None:
        LeverTestCase.setUp(self)
        self.autobahn: List[GlueServerProtocol] = []
        original = AutobahnTwisted.processHandshake

        def processHandshake(proto: Any) -> None:
            self.autobahn.append(proto)
            original(proto)

        # Where Autobahn defines it (its Twisted class, on older releases).
        self.patch(AutobahnTwisted, "processHandshake", processHandshake)

    def handshake(self, data: bytes, factory: Any = None) -> bytes:
        factory = factory or self.factory
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        proto = factory.buildProtocol(peer)
        transport = Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 9998), peerAddress=peer)
        proto.makeConnection(transport)
        self.addCleanup(self.disconnect, proto)
        proto.dataReceived(data)
        return transport.value()

    def test_browserAndPlainTakeIt(self) -> None:
        """
        A browser's handshake and a bare one both go the quick way.
        """
        bare = [
            ("Host", HOST),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
        for headers in (BROWSER, bare):
            written = self.handshake(request("GET / HTTP/1.1", headers))
            self.assertTrue(written.startswith(b"HTTP/1.1 101 "), written)
        self.assertEqual(self.autobahn, [])

    def test_othersGoToAutobahn(self) -> None:
        """
        A subprotocol, a bad key, another path, bytes after the request:
        Autobahn's.
        """
        for data in (
            request("GET / HTTP/1.1", BROWSER + [("Sec-WebSocket-Protocol", "chat")]),
            request(
                "GET / HTTP/1.1",
                [(n, v + "!" if n == "Sec-WebSocket-Key" else v) for n, v in BROWSER],
            ),
            request("GET /other HTTP/1.1", BROWSER),
            request("GET / HTTP/1.1", BROWSER, b"\x81\x80abcd"),
        ):
            self.handshake(data)
        self.assertEqual(len(self.autobahn), 4)

    def test_subclassWithOwnOnConnect(self) -> None:
        """
        A subclass with its own C{onConnect} gets it called, through Autobahn.
        """
        called = []

        class Own(GlueServerProtocol):
            def onConnect(self, request: Any) -> Any:
                called.append(request.path)
                return GlueServerProtocol.onConnect(self, request)

        factory = GlueServerFactory(reactor=self.clock)
        factory.protocol = Own
        withLevers(factory)
        written = self.handshake(request("GET / HTTP/1.1", BROWSER), factory)
        self.assertTrue(written.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(called, ["/"])
