"""
The connection levers: a L{LeveredProtocol} that answers the common
opening handshake, reads small frames and writes small messages without
Autobahn's general machinery, and keeps an open connection small.

Each override here replaces code of Autobahn's C{WebSocketServerProtocol}
(or its factory) and defers to it for everything it does not take, so
that Autobahn answers uncommon and bad input as before.  They are turned
on by L{wsglue.levers.Levers.apply}, never by importing this module:

  - the quick opening handshake (L{LeveredProtocol.processHandshake});
  - the short frame reader (L{LeveredProtocol._readFrames}) and the direct
    writes of small frames (C{sendRaw}, C{sendPrepared}, C{sendData});
  - compaction (L{LeveredProtocol._compact}): the factory's protocol
    options as class attributes, the handshake's state dropped once open;
  - lazy state: what Autobahn's C{__init__} and C{connectionMade} build
    for every connection is made when first read (L{_WhenRead});
  - the debug-log arguments Autobahn builds on every connection, deferred
    until a line is really formatted (L{deferDebugArguments}).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import deque
from operator import attrgetter, is_
from pprint import pformat
from types import MethodType
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import autobahn.twisted.websocket as _autobahnTwisted
import autobahn.websocket.protocol as _autobahnProtocol
import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import hltype, hlval
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import (
    PreparedMessage,
    _is_same_origin,
    _url_to_origin,
    parseHttpHeader,
)
from autobahn.websocket.types import ConnectionDeny
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from wsglue.levers.fastwrite import ImmediateWriteServer, bufferedBytes
from wsglue.protocol import GlueServerFactory, GlueServerProtocol, payloadSize
from wsglue.registry import Message, forLog

_log = Logger()

STATE_OPEN = WebSocketServerProtocol.STATE_OPEN
STATE_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING
SEND_STATE_GROUND = WebSocketServerProtocol.SEND_STATE_GROUND


class _LazyText(str):
    """
    C{func(arg)}, computed only when it is formatted or printed.  A C{str}
    (empty until then), for code that needs the function's result to be a
    string: Autobahn's C{Timings.__str__} returns its C{pformat}.
    """

    def __new__(cls, func: Any, arg: Any) -> "_LazyText":
        self = str.__new__(cls)
        self.func = func
        self.arg = arg
        return self

    def __str__(self) -> str:
        return self.func(self.arg)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self.func(self.arg), spec)


class _LaterText:
    """
    C{func(arg)}, computed only when it is formatted or printed: a lighter
    L{_LazyText} (no dictionary per value) for values that only ever reach
    a log line's format string.
    """

    __slots__ = ("func", "arg")

    def __init__(self, func: Any, arg: Any) -> None:
        self.func = func
        self.arg = arg

    def __str__(self) -> str:
        return str(self.func(self.arg))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self.func(self.arg), spec)


def _lazy(kind: type, func: Any) -> Any:
    """
    C{func} of one argument, made to return a C{kind} (L{_LazyText} or
    L{_LaterText}) that calls it when formatted.
    """

    def later(arg: Any) -> Any:
        return kind(func, arg)

    return later


_LazyPformat = _lazy(_LazyText, pformat)


_deferred = False


def deferDebugArguments() -> None:
    """
    Make Autobahn build the arguments of its debug log lines only when a
    line is formatted.

    Autobahn builds them on every connection even when nothing logs at
    debug level: it pretty-prints its ~40 protocol options (about a
    seventh of the CPU time of a handshake) and colours the names of its
    methods and values (C{hltype}, C{hlval}: about a sixth of what was
    left).  Each line stays identical for whoever does log at debug level.
    Autobahn passes C{hltype}'s and C{hlval}'s results to log calls only,
    always with one argument.
    """
    global _deferred
    if _deferred:
        return
    _deferred = True
    _autobahnProtocol.pformat = _LazyPformat
    for module in (_autobahnProtocol, _autobahnTwisted):
        module.hltype = _lazy(_LaterText, hltype)
        module.hlval = _lazy(_LaterText, hlval)


# What Autobahn keeps of the opening handshake; see _compact.
_HANDSHAKE_STATE = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_extensions",
    "_wskey",
)


# State Autobahn sets on every connection that, on an open connection, nearly
# always holds its initial value: a flag not raised, a code or timer not
# there yet, an extension not negotiated.  GlueServerProtocol carries these
# values as class attributes, so that an open connection need not hold them
# itself (see _compact); Autobahn sets its own value again when one changes.
_COLD_DEFAULTS: Dict[str, Any] = dict.fromkeys(
    (
        "_perMessageCompress",
        "autoPingPending",
        "autoPingPendingCall",
        "autoPingPendingSent",
        "autoPingTimeoutCall",
        "closeHandshakeTimeoutCall",
        "localCloseCode",
        "localCloseReason",
        "openHandshakeTimeoutCall",
        "remoteCloseCode",
        "remoteCloseReason",
        "trackedTimings",
        "wasNotCleanReason",
        "websocket_protocol_in_use",
    )
    + _HANDSHAKE_STATE,
    None,
)
_COLD_DEFAULTS.update(
    dict.fromkeys(
        (
            "closedByMe",
            "droppedByMe",
            "failedByMe",
            "triggered",
            "wasClean",
            "wasCloseHandshakeTimeout",
            "wasMaxFramePayloadSizeExceeded",
            "wasMaxMessagePayloadSizeExceeded",
            "wasOpenHandshakeTimeout",
            "wasServerConnectionDropTimeout",
            "wasServingFlashSocketPolicyFile",
        ),
        False,
    )
)
_COLD_DEFAULTS["autoPingPendingSeq"] = 0


class _NoTrafficStats:
    """
    Autobahn's per-connection traffic counters, not kept: every counter
    reads 0 and adding to one does nothing.  Nothing in wsglue reads them,
    and wsglue's own frame and send paths never counted.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0

    def __setattr__(self, name: str, value: Any) -> None:
        pass


class _WhenRead:
    """
    A connection attribute made by C{make(connection)} when it is first
    read, and kept from then on; until then the connection holds nothing
    for it.  For state Autobahn builds on every connection that most
    connections never read.
    """

    def __init__(self, make: Any) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, connection: Any, cls: Optional[type] = None) -> Any:
        if connection is None:
            return self
        value = connection.__dict__[self.name] = self.make(connection)
        return value


def _peerOf(connection: Any) -> str:
    """
    Autobahn's C{peer} of C{connection} (C{tcp4:127.0.0.1:52914}), as its
    C{connectionMade} makes it.  Autobahn reads it for log lines only
    (and its slow handshake path for the L{ConnectionRequest}); an open
    connection that nothing logs about never needs it.
    """
    if connection.transport is None:
        return WebSocketServerProtocol.peer
    return peer2str(connection.transport)


def _openFuture(connection: Any) -> Any:
    """
    Autobahn's C{is_open}: a Deferred that fires when the connection
    opens; already fired if the short handshake path opened it before
    anything read it (Autobahn's own path reads it to fire it).
    """
    future = txaio.create_future()
    if connection._opened:
        txaio.resolve(future, None)
    return future


def _closedFuture(connection: Any) -> Any:
    """
    Autobahn's C{is_closed}: a Deferred that fires with the connection when
    it closes; already fired if it is first read after
    L{GlueServerProtocol.connectionLost} let go of the one Autobahn fired.
    """
    future = txaio.create_future()
    if connection._closeFired:
        txaio.resolve(future, connection)
    return future


def _transportDetails(connection: Any) -> Optional[TransportDetails]:
    """
    Autobahn's transport details of C{connection}, as its C{connectionMade}
    makes them.  Autobahn reads them only to tell a TLS connection at open
    (see L{GlueServerProtocol._onOpen}) and on request.
    """
    if connection.transport is None:
        return None
    details = create_transport_details(connection.transport, connection.is_server)
    details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
    return details


# What an open connection no longer keeps, and the class attribute that
# stands for it (see _compact): the traffic counters; the transport details
# (made again if read: see _WhenRead); the subprotocols and extensions
# negotiated, when there were none.
_SHED = {
    "trafficStats": _NoTrafficStats(),
    "_transport_details": _WhenRead(_transportDetails),
    "websocket_protocols": (),
    "websocket_extensions_in_use": (),
}
# Of _SHED, what goes whatever its value (the others only when empty).
_SHEDDABLE = ("trafficStats", "_transport_details")

# Autobahn's protocol options, copied from the factory onto every
# connection, and three values that are the same on every open connection
# (connected, the sending state, the WebSocket version 13); see
# GlueServerProtocol._compact.
_CONFIG_ATTRS = tuple(WebSocketServerProtocol.CONFIG_ATTRS)
_configValues = attrgetter(*_CONFIG_ATTRS)
_OPTIONS = _CONFIG_ATTRS + (
    "connected",
    "send_state",
    "websocket_version",
)

# What _compact does with each name of a connection's dictionary (a name
# not listed stays): _MOVE it to the options class, _DROP it, drop it when
# _EMPTY, or drop it when it holds the value given (its cold default).
_MOVE = object()
_DROP = object()
_EMPTY = object()
_COMPACT_RULES: Dict[str, Any] = {}
for _name in _COLD_DEFAULTS:
    _COMPACT_RULES[_name] = _COLD_DEFAULTS[_name]
for _name in _SHED:
    _COMPACT_RULES[_name] = _DROP if _name in _SHEDDABLE else _EMPTY
for _name in _HANDSHAKE_STATE:
    _COMPACT_RULES[_name] = _DROP
for _name in _OPTIONS:
    _COMPACT_RULES[_name] = _MOVE
del _name
_OPTION_ORDER = {name: i for i, name in enumerate(_OPTIONS)}


# The message and frame hooks of Autobahn's protocol; a subclass that
# overrides one of them sees every frame through Autobahn's parser.
_FRAME_HOOKS = (
    "onMessage",
    "onMessageBegin",
    "onMessageFrameBegin",
    "onMessageFrameData",
    "onMessageFrameEnd",
    "onMessageEnd",
    "onFrameBegin",
    "onFrameData",
    "onFrameEnd",
    "processData",
)
_plainClasses: Dict[type, bool] = {}


def _readsAsAutobahn(cls: type) -> bool:
    """
    Whether C{cls} keeps GlueServerProtocol's frame and message hooks, so
    that its short frame path delivers what Autobahn's parser would.
    """
    plain = _plainClasses.get(cls)
    if plain is None:
        plain = _plainClasses[cls] = all(getattr(cls, name) is getattr(LeveredProtocol, name) for name in _FRAME_HOOKS)
    return plain


# What _quickRequest takes: the path "/" with a plain query, and a
# Sec-WebSocket-Key as Autobahn checks it (24 characters of base64, the
# last two "==").
_QUICK_PATH = re.compile(r"/(?:\?[A-Za-z0-9._~%&=+-]*)?")
_WEBSOCKET_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_WS_MAGIC = WebSocketServerProtocol._WS_MAGIC
_quickClasses: Dict[type, bool] = {}


def _quickHandshakes(cls: type) -> bool:
    """
    Whether C{cls} keeps the C{onConnect} and C{succeedHandshake} that
    L{GlueServerProtocol.processHandshake} answers without Autobahn.
    """
    quick = _quickClasses.get(cls)
    if quick is None:
        quick = _quickClasses[cls] = (
            getattr(cls, "onConnect") is GlueServerProtocol.onConnect
            and getattr(cls, "succeedHandshake") is WebSocketServerProtocol.succeedHandshake
        )
    return quick


def _hasToken(value: Optional[str], token: str) -> bool:
    """
    Whether the comma-separated header C{value} lists C{token}, as
    Autobahn reads Upgrade and Connection.
    """
    if value is None:
        return False
    if "," not in value:
        # The usual one-token header ("websocket", "Upgrade").
        return value.strip().lower() == token
    return any(part.strip().lower() == token for part in value.split(","))


def _drained(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP transport of wsglue's that holds
    nothing back: the kernel took every byte written so far.
    """
    return (
        type(transport) is ImmediateWriteServer
        and not transport.dataBuffer
        and not transport._tempDataLen
        and not transport.TLS
    )


class LeveredProtocol(GlueServerProtocol):
    """
    L{GlueServerProtocol} with the connection levers (see the module's
    docstring); behaves the same.
    """

    # The longest frame _readFrames reads on this connection; 0 when it
    # reads none (see _shortFrameLimit).
    _frameLimit = 0

    # Whether this class carries the factory's protocol options as class
    # attributes (see GlueServerFactory.buildProtocol).
    _carriesOptions = False
    # Made when Autobahn's frame parser first reads it (see _WhenRead); the
    # short frame path never does.
    utf8validator = _WhenRead(lambda connection: Utf8Validator())
    # Made when first read (see _peerOf).
    peer = _WhenRead(_peerOf)
    # What Autobahn's __init__ makes for every connection, made when first
    # read instead (see __init__).
    is_open = _WhenRead(_openFuture)
    is_closed = _WhenRead(_closedFuture)
    _valid_events = ("message",)
    _results = _WhenRead(lambda connection: {"message": None})
    # Whether the short handshake path opened the connection before
    # anything read is_open (see _openFuture).
    _opened = False
    # The site (L{wsglue.web.front.GlueSite}) that built this connection as the
    # first protocol of its port, for as long as its first request may
    # still turn out to be for twisted.web (see GlueSite.buildProtocol).
    _front: Any = None

    def __init__(self) -> None:
        """
        Nothing to do here.

        Autobahn's C{__init__} gives every connection two Deferreds
        (C{is_open}, C{is_closed}), the event list and results of its
        observable, and blank transport details: about an eighth of the CPU
        time of a handshake in process, for things a gateway's connections
        rarely read.  Each is made when first read (see L{_WhenRead} and
        the class attributes above); Autobahn reads C{is_closed} to fire
        it when the connection closes.
        """

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        """
        Autobahn's C{connectionMade}, but for the peer and the transport
        details, made when first read (see L{_peerOf} and
        L{_transportDetails}).
        """
        try:
            self.transport.setTcpNoDelay(self.tcpNoDelay)
        except Exception:
            pass  # not TCP (Autobahn ignores this too)
        self._connectionMade()

    def _connectionMade(self) -> None:
        """
        Autobahn's C{_connectionMade}, for a connection whose class carries
        its options: the state whose initial value differs from the class
        attributes (L{_COLD_DEFAULTS}), and the opening handshake timer.
        Autobahn's own copies the ~40 options onto the connection first.
        """
        if not self._carriesOptions or self.trackTimings:
            WebSocketServerProtocol._connectionMade(self)
            return
        self.state = STATE_CONNECTING
        self.send_state = SEND_STATE_GROUND
        self.data = b""
        self.send_queue = deque()
        timeout = self.openHandshakeTimeout
        front = self._front
        if front is not None and front.handshakeTimeout and not 0 < timeout <= front.handshakeTimeout:
            # The site's deadline for a complete first request is the
            # shorter one (see GlueSite.buildProtocol).
            timeout = front.handshakeTimeout
        if timeout > 0:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(timeout, self.onOpenHandshakeTimeout)
        self.factory.countConnections += 1

    def onOpenHandshakeTimeout(self) -> None:
        front = self._front
        if front is not None and front.limits is not None:
            # No complete first request by the site's deadline (slowloris).
            front.limits.bite("dropped_handshake_timeout")
        WebSocketServerProtocol.onOpenHandshakeTimeout(self)

    def leaveForHTTP(self) -> Optional[float]:
        """
        Let go of a connection whose first request is for twisted.web (see
        L{wsglue.web.front.GlueSite.firstRequest}), before it is handed over:
        undo what C{connectionMade} set up.  Return the seconds left of its
        handshake deadline, or C{None} if it had none.
        """
        left = None
        pending = self.openHandshakeTimeoutCall
        if pending is not None:
            self.openHandshakeTimeoutCall = None
            left = max(0.0, pending.getTime() - self.factory.reactor.seconds())
            pending.cancel()
        self.factory.countConnections -= 1
        self.state = WebSocketServerProtocol.STATE_CLOSED
        self.data = b""
        self.transport = None
        return left

    def onOpen(self) -> None:
        self._frameLimit = self._shortFrameLimit()
        self._compact()
        GlueServerProtocol.onOpen(self)

    def _watchFlow(self) -> None:
        """
        Nothing: L{_sendBufferFull} reads the transport's buffer itself.
        """

    def _onOpen(self) -> None:
        if ISSLTransport.providedBy(self.transport):
            # Autobahn records the TLS channel id and peer certificate.
            WebSocketServerProtocol._onOpen(self)
        else:
            self.onOpen()

    # -- handshake ----------------------------------------------------------

    def processHandshake(self) -> None:
        """
        Answer an opening handshake that Autobahn would accept as it is
        without Autobahn's general machinery (L{_quickRequest},
        L{_quickAnswer}); any other request goes to Autobahn, which answers
        it, with its status code if it is bad.

        Autobahn's C{processHandshake} checks the request in a few dozen
        steps, with debug log arguments built at each, parses the URL and
        query, builds a L{ConnectionRequest}, calls C{onConnect} through a
        Deferred and answers in C{succeedHandshake}: about a third of the
        CPU time of a handshake.  This path takes the requests it can be
        sure of: complete, C{GET /} (a plain query allowed) over HTTP/1.1,
        one Host (any port), an Upgrade with C{websocket} and a Connection
        with C{upgrade}, version 13, one well-formed key, no subprotocol,
        an Origin Autobahn's own check lets through, and extension offers
        that are well formed and declined (as wsglue's are).  Its checks
        are Autobahn's, in Autobahn's own words where they are functions
        (parseHttpHeader, the Origin helpers, the extension parsers); it
        then admits the connection as C{onConnect} does and writes the
        response C{succeedHandshake} writes.
        """
        request = self._quickRequest()
        if request is None:
            WebSocketServerProtocol.processHandshake(self)
        else:
            self._quickAnswer(*request)

    def _quickRequest(self) -> Optional[Tuple[Any, ...]]:
        """
        The parts of the request in C{self.data} that L{_quickAnswer} needs,
        if it is one that path takes; C{None}, having changed nothing, if
        not.
        """
        if not _quickHandshakes(type(self)) or self.trackedTimings:
            return None
        data = self.data
        end = data.find(b"\r\n\r\n") + 4
        if end != len(data) or self.maxConnections > 0 or self.trustXForwardedFor:
            return None
        try:
            status, headers, counts = parseHttpHeader(data)
        except Exception:
            return None
        parts = status.split()
        if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1" or not _QUICK_PATH.fullmatch(parts[1]):
            return None
        factory: GlueServerFactory = self.factory
        host = headers.get("host")
        if host is None or counts["host"] > 1:
            return None
        host = host.strip()
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
            try:
                number = int(port.strip())
            except ValueError:
                return None
            if factory.externalPort and number != factory.externalPort:
                return None
        if (
            not _hasToken(headers.get("upgrade"), "websocket")
            or not _hasToken(headers.get("connection"), "upgrade")
            or "sec-websocket-protocol" in headers
        ):
            return None
        version = headers.get("sec-websocket-version")
        if version is None or counts["sec-websocket-version"] > 1:
            return None
        try:
            if int(version) != 13 or 13 not in self.versions:
                return None
        except ValueError:
            return None
        origin = headers.get("origin")
        if origin is None:
            origin = ""
        else:
            if counts["origin"] > 1:
                return None
            origin = origin.strip()
            try:
                originTuple = _url_to_origin(origin)
                if not (originTuple == "null" and factory.allowNullOrigin) and not _is_same_origin(
                    originTuple,
                    "https" if factory.isSecure else "http",
                    factory.externalPort or factory.port,
                    self.allowedOriginsPatterns,
                ):
                    return None
            except Exception:
                return None
        key = headers.get("sec-websocket-key")
        if key is None or counts["sec-websocket-key"] > 1:
            return None
        key = key.strip()
        if not _WEBSOCKET_KEY.fullmatch(key):
            return None
        extensions = []
        offered = headers.get("sec-websocket-extensions")
        if offered is not None:
            if counts["sec-websocket-extensions"] > 1:
                return None
            try:
                extensions = self._parseExtensionsHeader(offered)
                offers = [
                    PERMESSAGE_COMPRESSION_EXTENSION[name]["Offer"].parse(params)
                    for name, params in extensions
                    if name in PERMESSAGE_COMPRESSION_EXTENSION
                ]
                if offers and self.perMessageCompressionAccept(offers) is not None:
                    return None
            except Exception:
                return None
        return status, parts[1], host, headers, origin, key, extensions

    def _quickAnswer(
        self,
        status: str,
        uri: str,
        host: str,
        headers: Dict[str, str],
        origin: str,
        key: str,
        extensions: List[Any],
    ) -> None:
        """
        Admit and answer the request L{_quickRequest} took, as Autobahn's
        C{processHandshake} and C{succeedHandshake} would.
        """
        factory: GlueServerFactory = self.factory
        # What Autobahn keeps of the request (see _compact for what stays).
        self.http_request_data = self.data
        self.http_status_line = status
        self.http_headers = headers
        self.http_request_uri = uri
        self.http_request_host = host
        if uri == "/":
            self.http_request_path = uri
            self.http_request_params = {}
        else:
            url = urlparse(uri)
            self.http_request_path = url.path
            self.http_request_params = parse_qs(url.query)
        self.websocket_version = 13
        self.websocket_protocols = []
        self.websocket_origin = origin
        self.websocket_extensions = extensions
        self.data = b""
        self._wskey = key
        # Committed: from here on, Autobahn's handling of onConnect.
        try:
            admitted = factory.admission.admit(self.transport, headers, origin)
            self._admitted = admitted.address
            self.sid = admitted.sid
            extra = admitted.headers
        except ConnectionDeny as deny:
            self.failHandshake(deny.reason, deny.code)
            return
        except Exception as e:
            failure = txaio.create_failure()
            self.log.warn("Unexpected exception in onConnect ['{err.value}']", err=failure)
            self.log.warn("{tb}", tb=txaio.failure_format_traceback(failure))
            self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
            return
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        response = "HTTP/1.1 101 Switching Protocols\r\n"
        if factory.server:
            response += f"Server: {factory.server}\r\n"
        response += "Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
        for source in (factory.headers, extra):
            for name, values in source.items():
                if isinstance(values, str):
                    values = [values]
                else:
                    try:
                        values = iter(values)
                    except TypeError:
                        values = [values]
                for value in values:
                    response += f"{name}: {value}\r\n"
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_MAGIC).digest()).decode()
        response += f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        if self.logOctets or self.send_queue:
            self.sendData(response.encode("utf8"))
        else:
            # What Autobahn's sendData does here, but for its debug line.
            self.transport.write(response.encode("utf8"))
        self.http_response_data = response
        self.state = STATE_OPEN
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None
        if self.autoPingInterval:
            self.autoPingPendingCall = factory._batched_timer.call_later(self.autoPingInterval, self._sendAutoPing)
        self._onOpen()
        waiting = self.__dict__.get("is_open")
        if waiting is not None:
            txaio.resolve(waiting, None)
        else:
            # is_open, when first read, is made fired (see _openFuture).
            self._opened = True

    def _compact(self) -> None:
        """
        Shrink what an open connection holds.

        Autobahn gives every connection about 90 attributes: its ~30
        protocol options copied from the factory, the opening handshake
        (request bytes, parsed headers, response text: nothing reads them
        once the connection is open), and flags and codes at their initial
        values.  Their dictionary alone was 3.3 KB of every idle session.

        The connection moves to a subclass of its class that carries its
        options as class attributes (one subclass for all the connections
        that got the same options from the factory; a connection the
        factory built starts in one, see L{GlueServerFactory.buildProtocol},
        and moves on with the values every open connection shares),
        and keeps in its own dictionary only what differs from those and
        from L{_COLD_DEFAULTS}.  It also lets go of what L{_SHED} names: the
        traffic counters, the transport details, and empty lists of
        subprotocols and extensions.  Autobahn reads and sets every one of
        these attributes as before: a read finds the class attribute, a
        write gives the connection its own value again.
        """
        state = self.__dict__
        if not self.send_queue:
            # An empty deque, for chopped sends that wsglue never makes.
            state["send_queue"] = ()
        # A new dictionary, sized for what is left (see _COMPACT_RULES).
        kept = {}
        options = []
        rules = _COMPACT_RULES
        for name, value in state.items():
            rule = rules.get(name, kept)
            if rule is kept:
                kept[name] = value
            elif rule is _MOVE:
                options.append(name)
            elif rule is _DROP:
                pass
            elif rule is _EMPTY:
                if value:
                    kept[name] = value
            elif value is not rule:
                kept[name] = value
        if len(options) > 1:
            options.sort(key=_OPTION_ORDER.__getitem__)
        self.__class__ = self.factory.optionsClass(type(self), tuple(options), tuple([state[name] for name in options]))
        self.__dict__ = kept

    # -- the hot path -------------------------------------------------------
    #
    # Autobahn builds the arguments of debug log lines on every read and
    # write even when debug logging is off, and fires an observer event
    # (Deferreds included) for every message; wsglue registers no observers.
    # These overrides skip that work on the common path and defer to
    # Autobahn for everything else.

    def dataReceived(self, data: bytes) -> None:
        if (
            self._frameLimit
            and self.state == STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message
        ):
            data = self._readFrames(data)
            if not data:
                return
        front = self._front
        if front is not None:
            front.firstRequest(self, data)
            return
        self._dataReceived(data)

    def _shortFrameLimit(self) -> int:
        """
        The longest payload L{_readFrames} may read on this connection: 125
        bytes (a frame with a one-byte length), or less under a smaller size
        limit; 0 if something is negotiated or switched on that the short
        path leaves out.
        """
        if (
            not _readsAsAutobahn(type(self))
            or self._perMessageCompress is not None
            or self._listeners
            or self.logOctets
            or self.logFrames
            or self.trackedTimings
            or not self.utf8validateIncoming
            or not self.requireMaskedClientFrames
            or not self.applyMask
        ):
            return 0
        limit = 125
        for size in (self.maxFramePayloadSize, self.maxMessagePayloadSize):
            if 0 < size < limit:
                limit = size
        return limit

    def _readFrames(self, data: bytes) -> bytes:
        """
        Read the complete, small, unfragmented, masked text and binary
        frames at the start of C{data} and deliver their messages; return
        the bytes from the first frame that is anything else.

        These are nearly all the frames a gateway receives, and Autobahn's
        general frame parser spends about ten method calls and a masker
        object on each.  Whatever this does not take (control frames,
        fragments, long or incomplete frames, reserved bits, invalid UTF-8,
        frames over the size limits) goes to Autobahn's parser unchanged,
        which gives protocol errors their close codes as before.
        """
        limit = self._frameLimit
        end = len(data)
        pos = 0
        while end - pos >= 6:
            first = data[pos]
            second = data[pos + 1]
            # FIN, no RSV bits, text (1) or binary (2); MASK set.
            if (first != 0x81 and first != 0x82) or second < 0x80:
                break
            length = second & 0x7F
            start = pos + 6
            stop = start + length
            if length > limit or stop > end:
                break
            if length:
                key = data[pos + 2 : start] * ((length >> 2) + 1)
                payload = (
                    int.from_bytes(data[start:stop], "little") ^ int.from_bytes(key[:length], "little")
                ).to_bytes(length, "little")
            else:
                payload = b""
            message: Message
            if first == 0x81:
                try:
                    message = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break
            else:
                message = payload
            pos = stop
            self.factory.counters.received(length)
            if self.autoPingTimeoutCall is not None and self.autoPingRestartOnAnyTraffic:
                # Traffic stands in for a pong, as in Autobahn's onFrameEnd.
                self._cancelAutoPingTimeoutCall()
            self._received(message)
            if self.state != STATE_OPEN:
                break
        return data[pos:] if pos else data

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        # (_frameLimit is 0 when Autobahn must see every write: logOctets.)
        if sync or chopsize or self.send_queue or not self._frameLimit or self.state != STATE_OPEN:
            if not isinstance(self.send_queue, deque):
                self.send_queue = deque()  # see _compact
            WebSocketServerProtocol.sendData(self, data, sync, chopsize)
        else:
            self.transport.write(data)

    def onMessageEnd(self) -> None:
        if self._listeners:
            WebSocketServerProtocol.onMessageEnd(self)
            return
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    # -- the conn interface -------------------------------------------------

    def sendRaw(self, message: Message) -> bool:
        """
        Send C{message} as one frame, as it is: C{str} as a text frame,
        C{bytes} as a binary frame.  Return C{False} (and send nothing) if
        the connection is not open.
        """
        if self.state != STATE_OPEN or self._sendBufferFull(0):
            return False
        # A frame built by PreparedMessage goes out with one transport
        # write; sendMessage would walk Autobahn's fragmentation and
        # compression machinery for each small message.
        if isinstance(message, str):
            payload = message.encode("utf-8")
            if len(payload) < 126:
                # The header of a short unmasked frame is two bytes.
                self.sendData(bytes((0x81, len(payload))) + payload)
            else:
                self.sendPreparedMessage(PreparedMessage(payload, False, False, True))
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = bytes(message)
            self.sendPreparedMessage(PreparedMessage(payload, True, False, True))
        else:
            raise TypeError(f"can only send str or bytes, not {type(message).__name__}")
        self.factory.counters.sent(len(payload))
        if self.factory.verbose:
            _log.info("==> {text}", text=forLog(message))
        return True

    def sendPrepared(self, prepared: PreparedMessage) -> bool:
        """
        Send a frame built once by the registry for many connections.
        """
        if self.state != STATE_OPEN:
            return False
        if self._frameLimit and not self.send_queue and _drained(self.transport):
            # The common case, once per connection of a broadcast: nothing
            # held back and no compression negotiated (see _shortFrameLimit),
            # so the frame goes to the transport as built.
            self.transport.write(prepared.payloadHybi)
        elif self._sendBufferFull(0):
            return False
        elif self._frameLimit:
            self.sendData(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)
        self.factory.counters.sent(payloadSize(prepared))
        return True

    def _sendBufferFull(self, size: int) -> bool:
        """
        Whether this peer has stopped reading: more unsent bytes than
        C{--max-send-buffer}, read off the transport's own buffer
        (L{bufferedBytes}) rather than followed through its flow control.
        """
        transport = self.transport
        if _drained(transport):
            return False  # the common case, on every send
        limits = self.factory.limits
        if not limits.maxSendBuffer or bufferedBytes(transport) <= limits.maxSendBuffer:
            return False
        self._cutOffSlowPeer()
        return True


# The values an open connection leaves out of its own dictionary.
for _name, _value in list(_COLD_DEFAULTS.items()) + list(_SHED.items()):
    setattr(LeveredProtocol, _name, _value)
    if isinstance(_value, _WhenRead):
        _value.__set_name__(LeveredProtocol, _name)
del _name, _value


# -- the factory ---------------------------------------------------------------


class OptionsClasses:
    """
    The subclasses of a factory's protocol classes that carry its protocol
    options as class attributes (see L{LeveredProtocol._compact}): one per
    base class, kept for as long as the options stay the same objects.
    """

    def __init__(self) -> None:
        # By base class: the options class made last, its names and values.
        self._known: Dict[type, Tuple[type, Tuple[str, ...], Tuple[Any, ...]]] = {}

    def __call__(self, base: type, names: Tuple[str, ...], values: Tuple[Any, ...]) -> type:
        """
        A subclass of C{base} that carries the attributes C{names} with
        C{values} (Autobahn's protocol options, as the factory has them)
        as class attributes.
        """
        known = self._known.get(base)
        if known is not None:
            cls, knownNames, knownValues = known
            if knownNames == names and all(map(is_, knownValues, values)):
                return cls
        attributes = {
            # A function as a class attribute would read as a bound method
            # (perMessageCompressionAccept is one).
            name: staticmethod(value) if hasattr(type(value), "__get__") else value
            for name, value in zip(names, values)
        }
        attributes["__module__"] = base.__module__
        attributes["_carriesOptions"] = True
        cls = type(base.__name__, (base,), attributes)
        self._known[base] = (cls, names, values)
        return cls


def _buildProtocol(factory: GlueServerFactory, addr: Any) -> GlueServerProtocol:
    """
    A connection of the factory's protocol that starts with the factory's
    protocol options as class attributes (see L{OptionsClasses}), rather
    than copying them onto itself as Autobahn's connections do.
    """
    proto = factory.optionsClass(factory.protocol, _CONFIG_ATTRS, _configValues(factory))()
    proto.factory = factory
    return proto


_leveredClasses: Dict[type, type] = {}


def leveredClass(base: type) -> type:
    """
    C{base} (L{GlueServerProtocol} or a subclass) with the connection
    levers: L{LeveredProtocol} itself, or a subclass of both in which
    C{base}'s own overrides come first.  A class that overrides one of the
    hooks the short paths skip gets those paths turned off by the checks
    in L{_readsAsAutobahn} and L{_quickHandshakes}.
    """
    if issubclass(base, LeveredProtocol):
        return base
    cls = _leveredClasses.get(base)
    if cls is None:
        if base is GlueServerProtocol:
            cls = LeveredProtocol
        else:
            cls = type(base.__name__, (base, LeveredProtocol), {"__module__": base.__module__})
        _leveredClasses[base] = cls
    return cls


def leverFactory(factory: GlueServerFactory) -> None:
    """
    Turn the connection levers on for the connections C{factory} builds
    from now on.
    """
    factory.protocol = leveredClass(factory.protocol)
    factory.optionsClass = OptionsClasses()
    factory.buildProtocol = MethodType(_buildProtocol, factory)
    # The per-address limit reads a TCP transport's client tuple.
    factory.admission.peerHost = _fastPeerHost


def _fastPeerHost(transport: Any) -> str:
    """
    The peer's host of C{transport}: a TCP server transport's C{client}
    tuple, what C{getPeer()} would build an address object around.
    """
    if transport is None:
        return "local"
    client = getattr(transport, "client", None)
    if type(client) is tuple and client and type(client[0]) is str and client[0]:
        return client[0]
    peer = transport.getPeer()
    return str(getattr(peer, "host", None) or "local")


def precondition() -> Optional[str]:
    """
    Why the connection levers cannot run here, or C{None}: the methods and
    module functions of Autobahn they override or call.
    """
    from wsglue.levers import missingAttributes

    return missingAttributes(
        WebSocketServerProtocol,
        (
            "_connectionMade",
            "_dataReceived",
            "_onMessage",
            "_onOpen",
            "_parseExtensionsHeader",
            "_sendAutoPing",
            "_cancelAutoPingTimeoutCall",
            "_WS_MAGIC",
            "CONFIG_ATTRS",
            "processHandshake",
            "succeedHandshake",
        ),
    ) or missingAttributes(_autobahnProtocol, ("pformat", "hltype", "hlval"))
