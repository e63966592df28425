"""
A Python client of the C{wsglue.v1} subprotocol, on Autobahn's Twisted
client protocol: a session that survives reconnects.

L{GlueClient} picks a client id once, keeps the session cookie and its
positions in both streams, reconnects after a connection is lost (an
exponential backoff with full jitter, from 0.5 to 20 seconds; soon after
a 1001 or 1012, never after a 1008), resumes from its positions and sends
again the messages the server had not acknowledged, which the server
deduplicates by id.  What the application sees:

  - C{messageReceived(stream, offset, message)}: C{stream} is C{"s"} (the
    session stream) or C{"b"} (the broadcast stream); each stream's offsets
    go up by one, with no message missed or doubled across reconnects;
  - C{resync(welcome)}: the server could not replay what was missed (the
    gap is older than its history, or it restarted): state built from the
    streams should be fetched again;
  - C{replyReceived(message)}: a connection-scoped reply (never replayed);
  - C{acked(messageId)}: the handler took message C{messageId}.

Subclass L{GlueClient} and override those methods, or pass callables to
the constructor.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple, Union

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from wsglue.continuity import SUBPROTOCOL

Message = Union[str, bytes]
Position = Tuple[str, int]

_log = Logger()

# Close codes after which the client comes back at once (the server is
# going away or restarting), and after which it does not come back (the
# server refused it: a limit or a policy).
SOON = (1001, 1012)
NEVER = (1008,)


def backoff(attempt: int, rand: Callable[[], float], low: float = 0.5, high: float = 20.0) -> float:
    """
    The delay before reconnect number C{attempt} (from 0): full jitter over
    an exponential ceiling, C{rand() * min(high, low * 2**attempt)}, never
    under a tenth of C{low} so that a failing server is not hammered.
    """
    ceiling = min(high, low * (2 ** min(attempt, 32)))
    delay: float = max(low / 10, rand() * ceiling)
    return delay


def _payload(frame: Dict[str, Any]) -> Message:
    if "b64" in frame:
        return base64.b64decode(frame["b64"])
    data: str = frame["d"]
    return data


class _Connection(WebSocketClientProtocol):
    """
    One WebSocket connection of a L{GlueClient}.
    """

    glue: "GlueClient"

    def onConnect(self, response: Any) -> None:
        self.glue._connected(self, response)

    def onOpen(self) -> None:
        self.glue._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.glue._received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.glue._closed(self, self.remoteCloseCode if self.remoteCloseCode is not None else code)


class _Factory(WebSocketClientFactory):
    protocol = _Connection
    glue: "GlueClient"

    def buildProtocol(self, addr: Any) -> Any:
        proto: Any = WebSocketClientFactory.buildProtocol(self, addr)
        proto.glue = self.glue
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.glue._closed(None, None)


class GlueClient:
    """
    A C{wsglue.v1} session that survives reconnects (see the module's
    docstring).

    @ivar clientId: this client's id (one tab's), the same across reconnects.
    @ivar positions: the last position seen in each stream, C{"s"} and
        C{"b"} (C{None} before the first welcome).
    @ivar unacked: the messages sent and not yet acknowledged, by id.
    @ivar connection: the open connection, or C{None}.
    @ivar welcomed: whether the current connection's hello was answered.
    """

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        clock: Any = None,
        clientId: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        contextFactory: Any = None,
        rand: Optional[Callable[[], float]] = None,
        minDelay: float = 0.5,
        maxDelay: float = 20.0,
        messageReceived: Optional[Callable[[str, int, Message], None]] = None,
        replyReceived: Optional[Callable[[Message], None]] = None,
        resync: Optional[Callable[[Dict[str, Any]], None]] = None,
        acked: Optional[Callable[[int], None]] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.reactor = reactor
        # What times the reconnects (the reactor; a Clock in tests).
        self.clock = clock if clock is not None else reactor
        self.clientId = clientId or secrets.token_urlsafe(12)
        self.headers = dict(headers or {})
        self.contextFactory = contextFactory
        self.rand = rand or random.random
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.positions: Dict[str, Optional[Position]] = {"s": None, "b": None}
        self.unacked: "OrderedDict[int, str]" = OrderedDict()
        self.connection: Optional[_Connection] = None
        self.welcomed = False
        self.cookie: Optional[str] = None
        self.attempts = 0
        self.lastClose: Optional[int] = None
        self._nextId = 1
        self._running = False
        self._retry: Any = None
        self._stopped: Optional[Deferred] = None
        self._callbacks: Dict[str, Any] = {
            "messageReceived": messageReceived,
            "replyReceived": replyReceived,
            "resync": resync,
            "acked": acked,
        }

    # -- what the application overrides or passes -----------------------------

    def messageReceived(self, stream: str, offset: int, message: Message) -> None:
        callback = self._callbacks["messageReceived"]
        if callback is not None:
            callback(stream, offset, message)

    def replyReceived(self, message: Message) -> None:
        callback = self._callbacks["replyReceived"]
        if callback is not None:
            callback(message)

    def resync(self, welcome: Dict[str, Any]) -> None:
        callback = self._callbacks["resync"]
        if callback is not None:
            callback(welcome)

    def acked(self, messageId: int) -> None:
        callback = self._callbacks["acked"]
        if callback is not None:
            callback(messageId)

    def welcome(self, welcome: Dict[str, Any]) -> None:
        """
        Each welcome, before any replay (for tests and logs).
        """

    def gaveUp(self, code: Optional[int]) -> None:
        """
        The server refused the client (C{code} is in L{NEVER}); it does not
        come back.
        """

    # -- the application's calls ---------------------------------------------

    def start(self) -> None:
        """
        Connect, and keep connecting until L{stop}.
        """
        if not self._running:
            self._running = True
            self._connect()

    def send(self, message: Message) -> int:
        """
        Send C{message} to the handler, now if connected, else once the
        session is resumed; again after a reconnect until acknowledged.

        @return: its id.
        """
        messageId = self._nextId
        self._nextId += 1
        frame: Dict[str, Any] = {"t": "m", "id": messageId}
        if isinstance(message, str):
            frame["d"] = message
        else:
            frame["b64"] = base64.b64encode(message).decode("ascii")
        text = json.dumps(frame, separators=(",", ":"))
        self.unacked[messageId] = text
        if self.welcomed and self.connection is not None:
            self.connection.sendMessage(text.encode("utf-8"))
        return messageId

    def stop(self) -> Deferred:
        """
        Close (1000) and do not come back.  Fires once closed.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.connection is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._stopped = d
        self.connection.sendClose(1000)
        return d

    # -- the connection's events ---------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        headers = dict(self.headers)
        if self.cookie is not None:
            headers["Cookie"] = self.cookie
        factory = _Factory(self.url, headers=headers, protocols=[SUBPROTOCOL], reactor=self.reactor)
        factory.glue = self
        factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=3)
        connectWS(factory, self.contextFactory, timeout=10)

    def _connected(self, conn: _Connection, response: Any) -> None:
        if response.protocol != SUBPROTOCOL:
            _log.warn("the server did not select {p}: continuity is off there", p=SUBPROTOCOL)
        setCookie = response.headers.get("set-cookie")
        if setCookie:
            self.cookie = setCookie.split(";", 1)[0].strip()

    def _opened(self, conn: _Connection) -> None:
        self.connection = conn
        self.welcomed = False
        hello: Dict[str, Any] = {"t": "hello", "client": self.clientId}
        s, b = self.positions["s"], self.positions["b"]
        if s is not None and b is not None:
            hello["resume"] = {"s": list(s), "b": list(b)}
        conn.sendMessage(json.dumps(hello, separators=(",", ":")).encode("utf-8"))

    def _received(self, conn: _Connection, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            return
        try:
            frame = json.loads(payload.decode("utf-8"))
            kind = frame["t"]
        except (ValueError, KeyError, TypeError):
            _log.warn("ignored a frame that is not wsglue.v1: {frame!r}", frame=payload[:100])
            return
        if kind == "m":
            stream, offset = frame["s"], frame["o"]
            position = self.positions.get(stream)
            if position is not None:
                self.positions[stream] = (position[0], offset)
            self.messageReceived(stream, offset, _payload(frame))
        elif kind == "r":
            self.replyReceived(_payload(frame))
        elif kind == "ack":
            self.unacked.pop(frame["id"], None)
            self.acked(frame["id"])
        elif kind == "welcome":
            self._welcomed(conn, frame)

    def _welcomed(self, conn: _Connection, frame: Dict[str, Any]) -> None:
        self.welcomed = True
        self.attempts = 0
        self.welcome(frame)
        if not frame["recovered"]:
            # Nothing will be replayed: carry on from the current positions.
            self.positions = {"s": (frame["s"][0], frame["s"][1]), "b": (frame["b"][0], frame["b"][1])}
            self.resync(frame)
        # The server acks again what it already took: resending is safe.
        for text in self.unacked.values():
            conn.sendMessage(text.encode("utf-8"))

    def _closed(self, conn: Optional[_Connection], code: Optional[int]) -> None:
        if conn is not None and conn is not self.connection and self.connection is not None:
            return
        self.connection = None
        self.welcomed = False
        self.lastClose = code
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)
        if not self._running:
            return
        if code in NEVER:
            self._running = False
            self.gaveUp(code)
            return
        if code in SOON:
            delay = self.rand() * self.minDelay
        else:
            delay = backoff(self.attempts, self.rand, self.minDelay, self.maxDelay)
        self.attempts += 1
        self._retry = self.clock.callLater(delay, self._connect)


__all__ = ["GlueClient", "backoff"]
