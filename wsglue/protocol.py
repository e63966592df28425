"""
The WebSocket protocol and its factory, on Autobahn's public hooks.

The factory owns the session registry, the admission rules (origin, limits,
cookie) and the application handler; a protocol instance is one browser
connection.  It is admitted in C{onConnect} (which sets C{Set-Cookie} for a
new session), registers itself with the registry in C{onOpen}, hands
messages to the handler from C{onMessage} and leaves the registry in
C{onClose}.  The protocol is also the C{conn} that handlers and the registry
see: C{send}, C{sendPrepared}, C{close}.

This module uses Autobahn's and Twisted's public API only.  What replaces
their internals for speed lives in L{wsglue.levers}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.admission import Admission
from wsglue.continuity import SUBPROTOCOL, SessionProtocol
from wsglue.cookies import SessionCookies, shortId
from wsglue.counters import RateLimitedWarning
from wsglue.handlers import HandlerAdapter, PingPong
from wsglue.limits import Limits, TokenBucket
from wsglue.origin import OriginPolicy
from wsglue.registry import Message, SessionRegistry, forLog, prepare

_log = Logger()

try:
    from OpenSSL.SSL import Error as _TLSError
except ImportError:  # pragma: no cover (Twisted[tls] installs pyOpenSSL)
    _TLSError = ()  # type: ignore[assignment,misc]

STATE_OPEN = WebSocketServerProtocol.STATE_OPEN
STATE_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING


class SendFlow:
    """
    A connection's view of its transport's flow control: registered as the
    transport's streaming producer, it is paused while the transport holds
    more than its own buffer size (64 KiB for TCP) and resumed once that
    is written.  While paused it counts the bytes still sent, so that a
    peer that stopped reading is found with Twisted's public API alone.
    """

    paused = False
    sincePaused = 0

    def pauseProducing(self) -> None:
        # Twisted calls it on every write while its buffer is over size.
        if not self.paused:
            self.paused = True
            self.sincePaused = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.sincePaused = 0

    def stopProducing(self) -> None:
        self.paused = False


class ClosedFuture:
    """
    C{is_closed} of a connection once L{GlueServerProtocol.connectionLost}
    let go of the one Autobahn fired: a Deferred already fired with the
    connection, made when read.
    """

    def __get__(self, connection: Any, cls: Optional[type] = None) -> Any:
        if connection is None:
            return self
        return succeed(connection)


class GlueServerProtocol(WebSocketServerProtocol):
    """
    One browser connection.

    @ivar sid: the session id, once the handshake is admitted.
    """

    sid: Optional[str] = None
    # Whether this connection is in the registry (open and admitted).
    _registered = False
    # The address this connection was admitted for (see Limits.admit).
    _admitted: Optional[str] = None
    _bucket: Optional[TokenBucket] = None
    _flow: Optional[SendFlow] = None
    # Whether is_closed fired and connectionLost let go of it.
    _closeFired = False
    is_closed = ClosedFuture()
    # The wsglue.v1 side of the connection, when the client selected it
    # (None: a plain connection).  The registry reads it on every send.
    continuity: Optional[SessionProtocol] = None

    # -- handshake ----------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> Tuple[Optional[str], Dict[str, str]]:
        """
        Admit the handshake (L{Admission.admit}): a refusal raises
        L{ConnectionDeny}, which Autobahn answers with its status.  Return
        the subprotocol selected (C{wsglue.v1} when the client offers it and
        continuity is on; none otherwise, so that a client offering only
        subprotocols we do not know is served plainly) and the headers to
        add to the 101.
        """
        admitted = self.factory.admission.admit(self.transport, request.headers, request.origin)
        self._admitted = admitted.address
        self.sid = admitted.sid
        selected = None
        if SUBPROTOCOL in request.protocols and self.factory.registry.history is not None:
            selected = SUBPROTOCOL
        return selected, admitted.headers

    def onOpen(self) -> None:
        factory: GlueServerFactory = self.factory
        sid = self.sid
        assert sid is not None
        limits = factory.limits
        perSession = limits.maxConnectionsPerSession
        if perSession and len(factory.registry.connections(sid)) >= perSession:
            # The tabs already open keep working; only this one goes.
            limits.bite("closed_per_session", sid=shortId(sid))
            self.close(1008, "too many connections for this session")
            return
        self._bucket = limits.messageBucket()
        self._watchFlow()
        factory.registry.add(sid, self)
        self._registered = True
        if self.websocket_protocol_in_use == SUBPROTOCOL:
            self.continuity = SessionProtocol(
                self,
                sid,
                factory.registry,
                factory.handler,
                helloTimeout=factory.handshakeTimeout,
                counters=factory.counters,
            )
        _log.info(
            "session opened: {sid}",
            sid=shortId(sid),
            connections=len(factory.registry.connections(sid)),
        )
        factory.handler.opened(sid, self)

    def _watchFlow(self) -> None:
        """
        Follow the transport's flow control (see L{SendFlow}) when a send
        buffer limit is set.
        """
        if self.factory.limits.maxSendBuffer:
            self._flow = SendFlow()
            self.registerProducer(self._flow, True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        A TLS error (a plain-HTTP request, garbage or a scanner on a C{ssl:}
        port) is counted (C{dropped_tls_error}) and logged at most once per
        10 seconds, instead of the error line Autobahn logs for each.
        """
        value = reason.value
        if isinstance(value, _TLSError):
            factory: GlueServerFactory = self.factory
            total = factory.counters.add("dropped_tls_error")
            factory.warn(
                "tls",
                "TLS error from a peer, connection dropped: {why}"
                " ({suppressed} more since the last warning, {total} in all)",
                why=str(value)[:200],
                total=total,
            )
            reason = Failure(ConnectionLost(f"TLS error: {value}"))
        WebSocketServerProtocol.connectionLost(self, reason)
        # Autobahn fires is_closed with the connection itself: a cycle
        # (connection -> is_closed -> connection) that reference counting
        # cannot free, so every closed connection (transport, buffers,
        # dictionary: about 2 KB) waited for the cyclic collector.  Under
        # continuous reconnects thousands were held at a time.  A later read
        # gets an equal, already fired Deferred (see ClosedFuture).
        closed = self.__dict__.get("is_closed")
        if closed is not None and closed.called:
            del self.__dict__["is_closed"]
            self._closeFired = True

    # -- traffic ------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.counters.received(len(payload))
        # Autobahn has checked that a text message is valid UTF-8.
        self._received(payload if isBinary else payload.decode("utf-8"))

    def _received(self, message: Message) -> None:
        """
        A whole message arrived: apply the message rate limit, then hand it
        to the application handler.
        """
        factory: GlueServerFactory = self.factory
        if not self._registered or self.state != STATE_OPEN:
            return
        if self._bucket is not None and not self._bucket.take():
            factory.limits.bite("closed_message_rate", sid=shortId(self.sid or ""))
            self.close(1008, "too many messages")
            return
        if factory.verbose:
            # Not "message": twisted.logger's legacy bridge owns that key.
            _log.info("<== {text} from {sid}", text=forLog(message), sid=shortId(self.sid or ""))
        session = self.continuity
        if session is not None:
            session.received(message)
            return
        factory.handler.received(self.sid or "", self, message)

    def dropConnection(self, abort: bool = False) -> None:
        """
        Autobahn's C{dropConnection}, but a closing handshake that completed
        cleanly ends the TCP connection gracefully.

        Autobahn aborts the connection as soon as the peer answers a close
        that the server started.  An abort discards what the transport still
        holds, and Twisted's transport sends on the next reactor turn: a
        client that sends a frame and its own close at once never saw the
        close frame (1003, 1008…) written in reply to the frame.  A peer
        that answers the close but then stops reading is aborted after the
        closing-handshake timeout.
        """
        if abort and self.wasClean and self.transport is not None:
            transport = self.transport
            WebSocketServerProtocol.dropConnection(self, abort=False)
            self._lingering = self.factory.reactor.callLater(
                getattr(self, "closeHandshakeTimeout", 3) or 3,
                transport.abortConnection,  # type: ignore[attr-defined]
            )
            return
        WebSocketServerProtocol.dropConnection(self, abort)

    _lingering: Any = None

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        # Autobahn does not cancel its closing-handshake timer when the TCP
        # connection is lost (it drops the connection right after sending
        # e.g. 1007), so a dead connection would hold a timer for
        # closeHandshakeTimeout seconds.
        pending = self.closeHandshakeTimeoutCall
        if pending is not None:
            self.closeHandshakeTimeoutCall = None
            pending.cancel()
        lingering = self._lingering
        if lingering is not None and lingering.active():
            self._lingering = None
            lingering.cancel()
        if self._admitted is not None:
            # The code of whoever started the close (Autobahn passes the
            # peer's, which merely echoes ours); 1005: none was given.
            self.factory.counters.add(f"closes:{(self.localCloseCode if self.closedByMe else code) or 1005}")
            self.factory.limits.release(self._admitted)
            self._admitted = None
        if not self._registered:
            return
        self._registered = False
        factory: GlueServerFactory = self.factory
        sid = self.sid
        assert sid is not None
        session = self.continuity
        if session is not None:
            session.closed()
        factory.registry.remove(sid, self)
        _log.info("session closed: {sid}", sid=shortId(sid), code=code)
        factory.handler.closed(sid, self)
        factory.connectionGone()

    # -- the conn interface -------------------------------------------------

    def send(self, message: Message) -> bool:
        """
        Send C{message}: C{str} as a text frame, C{bytes} as a binary frame;
        on a C{wsglue.v1} connection, as a connection-scoped reply frame.
        Return C{False} (and send nothing) if the connection is not open.
        """
        session = self.continuity
        if session is not None:
            return self.sendRaw(session.reply(message))
        return self.sendRaw(message)

    def sendRaw(self, message: Message) -> bool:
        """
        Send C{message} as one frame, as it is: C{str} as a text frame,
        C{bytes} as a binary frame.  Return C{False} (and send nothing) if
        the connection is not open.
        """
        if isinstance(message, str):
            payload, binary = message.encode("utf-8"), False
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload, binary = bytes(message), True
        else:
            raise TypeError(f"can only send str or bytes, not {type(message).__name__}")
        if self.state != STATE_OPEN or self._sendBufferFull(len(payload)):
            return False
        self.sendMessage(payload, binary)
        self.factory.counters.sent(len(payload))
        if self.factory.verbose:
            _log.info("==> {text}", text=forLog(message))
        return True

    def sendPrepared(self, prepared: PreparedMessage) -> bool:
        """
        Send a frame built once by the registry for many connections.
        """
        if self.state != STATE_OPEN or self._sendBufferFull(len(prepared.payloadHybi)):
            return False
        self.sendPreparedMessage(prepared)
        self.factory.counters.sent(payloadSize(prepared))
        return True

    def _sendBufferFull(self, size: int) -> bool:
        """
        Whether this peer has stopped reading: more unsent bytes than
        C{--max-send-buffer} once C{size} more are sent.  If so it is closed
        with 1008 and nothing more is queued for it, so a slow consumer
        costs at most the limit plus one message (and the transport's own
        buffer, see L{SendFlow}).
        """
        flow = self._flow
        if flow is None or not flow.paused:
            return False
        flow.sincePaused += size
        if flow.sincePaused <= self.factory.limits.maxSendBuffer:
            return False
        self._cutOffSlowPeer()
        return True

    def _cutOffSlowPeer(self) -> None:
        self.factory.limits.bite("closed_send_buffer", sid=shortId(self.sid or ""))
        # The close frame is queued behind what the peer has not read; if
        # it never reads, the close handshake timeout drops the TCP
        # connection and its buffer with it.
        self.close(1008, "not reading fast enough")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close with C{code} and C{reason}: a close frame, then the TCP
        connection once the peer answers (or the close timeout passes).
        """
        if self.state == STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if reason else None)
        elif self.state == STATE_CONNECTING:
            self.dropConnection(abort=True)


def payloadSize(prepared: PreparedMessage) -> int:
    """
    The payload bytes of a frame built by L{prepare} (unmasked, one frame):
    its length less its 2-, 4- or 10-byte header.
    """
    n = len(prepared.payloadHybi)
    return n - 2 if n <= 127 else n - 4 if n <= 65539 else n - 10


class GlueServerFactory(WebSocketServerFactory):
    """
    Builds L{GlueServerProtocol}s and owns what they share.

    @ivar registry: the L{SessionRegistry} of this service.
    @ivar admission: the L{Admission} rules (with C{cookies}, C{origins},
        C{limits} and C{trustProxy}, also attributes of the factory).
    @ivar handler: the application handler, behind a L{HandlerAdapter}.
    """

    protocol = GlueServerProtocol

    def __init__(
        self,
        registry: Optional[SessionRegistry] = None,
        cookies: Optional[SessionCookies] = None,
        origins: Optional[OriginPolicy] = None,
        handlerFactory: Any = PingPong,
        handler: Any = None,
        verbose: bool = False,
        trustProxy: bool = False,
        maxMessageSize: int = 65536,
        pingInterval: float = 30,
        pingTimeout: float = 10,
        handshakeTimeout: float = 10,
        reactor: Any = None,
        limits: Optional[Limits] = None,
    ) -> None:
        WebSocketServerFactory.__init__(self, server="wsglue", reactor=reactor)
        self.registry = registry if registry is not None else SessionRegistry()
        self.cookies = cookies if cookies is not None else SessionCookies()
        self.origins = origins if origins is not None else OriginPolicy()
        self.limits = limits if limits is not None else Limits(clock=self.reactor)
        self.trustProxy = trustProxy
        # The daemon's counters (shared with the limits) and its warnings
        # for events that can come by the thousand.
        self.counters = self.limits.counters
        self.warn = RateLimitedWarning(self.reactor, 10.0, _log)
        self.admission = Admission(self.cookies, self.origins, self.limits, trustProxy)
        # An application handler already built (by makeService), or one
        # built here from handlerFactory.
        if handler is None:
            handler = handlerFactory(self.registry)
        self.handler = HandlerAdapter(handler)
        if self.handler.wantsPresence:
            self.registry.watchPresence(self.handler.sessionStarted, self.handler.sessionEnded)
        self.verbose = verbose
        # A wsglue.v1 client has this long to say hello once open.
        self.handshakeTimeout = handshakeTimeout
        # --verbose covers what server code sends through the registry too.
        self.registry.verbose = verbose
        self._emptyWaiters: List[Deferred] = []
        self.setProtocolOptions(
            # Answer protocol errors with a close frame carrying the code
            # (1002, 1003, 1007, 1009) rather than dropping the TCP connection.
            failByDrop=False,
            maxMessagePayloadSize=maxMessageSize,
            maxFramePayloadSize=maxMessageSize,
            autoPingInterval=pingInterval,
            autoPingTimeout=pingTimeout,
            openHandshakeTimeout=handshakeTimeout,
            closeHandshakeTimeout=3,
            requireMaskedClientFrames=True,
            perMessageCompressionAccept=None,
            # Origin "null" (sandboxed frames, file: pages) reaches our
            # OriginPolicy, which refuses it with 403 unless a pattern
            # allows it, instead of Autobahn's 400.
            allowNullOrigin=True,
        )

    def connectionGone(self) -> None:
        """
        A registered connection closed; wake whoever waits for none to be left.
        """
        if not self.registry.connectionCount and self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)

    def whenEmpty(self) -> Deferred:
        """
        A Deferred that fires once no connection is registered.
        """
        if not self.registry.connectionCount:
            return succeed(None)
        d: Deferred = Deferred()
        self._emptyWaiters.append(d)
        return d


__all__ = ["GlueServerFactory", "GlueServerProtocol", "SendFlow", "forLog", "payloadSize", "prepare"]
