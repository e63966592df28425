"""
The C{wsglue.v1} subprotocol: sessions that survive reconnects.

A connection that selected C{wsglue.v1} gets a L{SessionProtocol}, which
the WebSocket protocol classes (with the speed levers and without) route
to: every text or binary message it receives, every stream message the
registry delivers to it (L{SessionProtocol.deliver}), every
connection-scoped reply (L{SessionProtocol.reply}) and its close.  It
answers the client's C{hello} with a C{welcome} and the replay of both
streams' gaps (or nothing), hands C{m} frames to the application handler
once per client id and acknowledges them.

The frames are JSON text, one object per frame; see C{docs/protocol.md}.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple, Union

from twisted.internet import defer
from twisted.logger import Logger

from wsglue.cookies import shortId

Message = Union[str, bytes]

SUBPROTOCOL = "wsglue.v1"

# A client picks its id once (one tab); what the server keeps of it.
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# How many of a client's latest message ids are remembered.
ID_WINDOW = 1000
# How many clients of a session whose connections all closed are
# remembered (the most recently closed): a page reloaded in a loop picks a
# new id each time.
IDLE_CLIENTS = 16
# The largest message id: the largest integer a JavaScript number holds
# exactly.
MAX_ID = 2**53 - 1
# The longest epoch a client may send back (ours are 14 characters).
MAX_EPOCH = 128

_log = Logger()
_encodeText = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _data(message: Message) -> str:
    """
    The payload member of a frame: C{"d":TEXT} for text, C{"b64":BASE64}
    for binary.
    """
    if isinstance(message, str):
        return '"d":' + _encodeText(message)
    return '"b64":"' + base64.b64encode(message).decode("ascii") + '"'


def streamFrame(kind: str, offset: int, message: Message) -> str:
    """
    The frame of a stream message: C{kind} is C{"s"} (the session stream)
    or C{"b"} (the broadcast stream).
    """
    return '{"t":"m","s":"' + kind + '","o":' + str(offset) + "," + _data(message) + "}"


def replyFrame(message: Message) -> str:
    """
    The frame of a connection-scoped reply.
    """
    if not isinstance(message, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"can only send str or bytes, not {type(message).__name__}")
    if not isinstance(message, str):
        message = bytes(message)
    return '{"t":"r",' + _data(message) + "}"


def ackFrame(messageId: int) -> str:
    return '{"t":"ack","id":' + str(messageId) + "}"


def welcomeFrame(recovered: bool, session: Tuple[str, int], broadcast: Tuple[str, int]) -> str:
    return _encodeText(
        {"t": "welcome", "recovered": recovered, "s": [session[0], session[1]], "b": [broadcast[0], broadcast[1]]}
    )


class ProtocolError(Exception):
    """
    A frame the client should not have sent: the connection is closed with
    C{code} and C{reason}.
    """

    def __init__(self, code: int, reason: str) -> None:
        Exception.__init__(self, code, reason)
        self.code = code
        self.reason = reason


def _isInteger(value: Any) -> bool:
    return type(value) is int


def _position(value: Any, which: str) -> Tuple[str, int]:
    """
    A position a client sent back: C{[EPOCH, OFFSET]}.
    """
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or len(value[0]) > MAX_EPOCH
        or not _isInteger(value[1])
        or value[1] < 0
    ):
        raise ProtocolError(1002, f"resume.{which} must be [epoch, offset]")
    return value[0], value[1]


def parseHello(frame: Dict[str, Any]) -> Tuple[str, Optional[Tuple[Tuple[str, int], Tuple[str, int]]]]:
    """
    The client id and the positions to resume from (or C{None}) of a
    C{hello} frame.

    @raise ProtocolError: if it is not a well-formed C{hello}.
    """
    client = frame.get("client")
    if not isinstance(client, str) or not CLIENT_ID.fullmatch(client):
        raise ProtocolError(1002, "hello needs a client id of 8-64 characters [A-Za-z0-9_-]")
    resume = frame.get("resume")
    if resume is None:
        return client, None
    if not isinstance(resume, dict):
        raise ProtocolError(1002, "resume must be an object")
    return client, (_position(resume.get("s"), "s"), _position(resume.get("b"), "b"))


def parseMessage(frame: Dict[str, Any]) -> Tuple[int, Message]:
    """
    The id and the payload of an C{m} frame.

    @raise ProtocolError: if it is not a well-formed C{m}.
    """
    messageId = frame.get("id")
    if type(messageId) is not int or not 0 < messageId <= MAX_ID:
        raise ProtocolError(1002, "m needs an id, a positive integer")
    if "d" in frame:
        data = frame["d"]
        if not isinstance(data, str) or "b64" in frame:
            raise ProtocolError(1002, "m needs d, a string")
        return messageId, data
    encoded = frame.get("b64")
    if not isinstance(encoded, str):
        raise ProtocolError(1002, "m needs d, a string")
    try:
        return messageId, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(1002, "m has bad base64")


class ClientIds:
    """
    What the server keeps of one client (one tab) of a session: the ids of
    its latest L{ID_WINDOW} messages, how many connections it has open,
    and since when it has had none.

    The set and the deque of ids are made at the client's first message:
    empty, they are about 1 KiB, and most sessions (a page that only
    listens) never send one.
    """

    __slots__ = ("seen", "order", "connections", "idleSince")

    def __init__(self) -> None:
        self.seen: Optional[Set[int]] = None
        self.order: Optional[Deque[int]] = None
        self.connections = 0
        self.idleSince = 0.0

    def take(self, messageId: int) -> bool:
        """
        Note C{messageId}; return whether it is new (not among the
        client's latest ids).
        """
        seen, order = self.seen, self.order
        if seen is None or order is None:
            seen, order = self.seen, self.order = set(), deque()
        if messageId in seen:
            return False
        seen.add(messageId)
        order.append(messageId)
        if len(order) > ID_WINDOW:
            seen.discard(order.popleft())
        return True


def _forgetIdle(clients: Dict[str, ClientIds], now: float, ttl: float) -> None:
    """
    Drop the clients of a session that have had no connection for the
    history ttl, and the oldest idle ones past L{IDLE_CLIENTS}.
    """
    idle: List[Tuple[float, str]] = []
    for name, client in list(clients.items()):
        if client.connections:
            continue
        if client.idleSince + ttl <= now:
            del clients[name]
        else:
            idle.append((client.idleSince, name))
    if len(idle) > IDLE_CLIENTS:
        idle.sort()
        for _, name in idle[: len(idle) - IDLE_CLIENTS]:
            del clients[name]


class SessionProtocol:
    """
    The C{wsglue.v1} side of one connection (see the module's docstring).

    @ivar conn: the connection: its C{sendRaw} sends a text frame as it
        is, C{sendPrepared} a frame built once, C{close} closes it.
    @ivar answered: whether the client's C{hello} was answered; stream
        messages reach it only from then on.
    """

    __slots__ = (
        "conn",
        "sid",
        "registry",
        "handler",
        "counters",
        "answered",
        "_client",
        "_clients",
        "_timer",
        "_open",
        "_clientName",
        "_queue",
        "_inbox",
        "_helloing",
        "_last",
        "_chain",
    )

    def __init__(
        self, conn: Any, sid: str, registry: Any, handler: Any, helloTimeout: float = 0, counters: Any = None
    ) -> None:
        self.conn = conn
        # The daemon's counters: resumes:true and resumes:false (a hello
        # with positions; the metrics' wsglue_resumes_total{recovered}),
        # v1_protocol_errors.
        self.counters = counters
        self.sid = sid
        self.registry = registry
        self.handler = handler
        self.answered = False
        self._client: Optional[ClientIds] = None
        self._clients: Optional[Dict[str, ClientIds]] = None
        self._timer: Any = None
        # With the streams in Redis (registry.streamed): the hello is
        # answered once Redis is read; meanwhile the stream messages that
        # arrive are queued, and so are the client's m frames.
        self._clientName: Optional[str] = None
        self._queue: Optional[List[Tuple[str, str, int, Any]]] = None
        # (Made only then: the in-memory path costs no more per connection.)
        self._inbox: Optional[List[Tuple[int, Message]]] = None
        self._helloing = False
        # stream kind -> (epoch, last offset sent), from the welcome on.
        self._last: Optional[Dict[str, Tuple[str, int]]] = None
        self._chain: Any = None
        # Counted in the registry while open, so that its sends walk the
        # plain path alone while no wsglue.v1 connection is open.
        self._open = True
        registry.v1Connections += 1
        if helloTimeout > 0:
            self._timer = registry.history.clock.callLater(helloTimeout, self._noHello)

    # -- from the connection ----------------------------------------------

    def received(self, message: Message) -> None:
        """
        A whole message from the client.
        """
        try:
            if isinstance(message, bytes):
                raise ProtocolError(1003, "wsglue.v1 takes JSON text frames only")
            try:
                frame = json.loads(message)
            except (ValueError, RecursionError):
                raise ProtocolError(1007, "malformed JSON")
            if not isinstance(frame, dict):
                raise ProtocolError(1002, "a frame must be a JSON object")
            kind = frame.get("t")
            if kind == "m":
                if not self.answered:
                    if not self._helloing:
                        raise ProtocolError(1002, "hello first")
                    if self._inbox is None:
                        self._inbox = []
                    self._inbox.append(parseMessage(frame))
                    return
                self._message(*parseMessage(frame))
            elif kind == "hello":
                if self.answered or self._helloing:
                    raise ProtocolError(1002, "a second hello")
                self._hello(*parseHello(frame))
            else:
                raise ProtocolError(1002, "unknown frame type")
        except ProtocolError as e:
            self._fail(e.code, e.reason)

    def deliver(self, prepared: Any) -> bool:
        """
        A stream message, its frame built once for every C{wsglue.v1}
        connection; it is sent only once the C{hello} is answered (the
        positions in the C{welcome} cover whatever came before).
        """
        if not self.answered:
            return False
        sent: bool = self.conn.sendPrepared(prepared)
        return sent

    def deliverNumbered(self, kind: str, epoch: str, offset: int, framed: Any) -> bool:
        """
        A message numbered in Redis (C{kind} C{"s"} or C{"b"}), its frame
        built once: sent when it is the next offset of that stream, queued
        while the C{hello} is being answered, skipped when already sent
        (in the replay, or covered by the welcome's positions).  A gap or a
        new epoch closes the connection with 1013: the client resumes and
        is replayed exactly what it missed, or told to resynchronise.
        """
        if not self.answered:
            if self._queue is not None:
                self._queue.append((kind, epoch, offset, framed))
            return False
        assert self._last is not None
        known, last = self._last[kind]
        if epoch == known and offset <= last:
            return False
        if epoch != known or offset != last + 1:
            self.answered = False
            self.conn.close(1013, "stream moved on, resume")
            return False
        self._last[kind] = (epoch, offset)
        sent: bool = self.conn.sendPrepared(framed)
        return sent

    def reply(self, message: Message) -> str:
        """
        The frame that carries a connection-scoped reply.
        """
        return replyFrame(message)

    def closed(self) -> None:
        """
        The connection closed.
        """
        if not self._open:
            return
        self._open = False
        self.registry.v1Connections -= 1
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._queue = None
        if self._clientName is not None and getattr(self.registry, "streamed", False):
            self.registry.clientGone(self.sid, self._clientName)
        client = self._client
        if client is not None:
            self._client = None
            client.connections -= 1
            if not client.connections:
                history = self.registry.history
                client.idleSince = history.clock.seconds()
                if self._clients is not None:
                    _forgetIdle(self._clients, client.idleSince, history.ttl)

    # -- the frames ---------------------------------------------------------

    def _noHello(self) -> None:
        self._timer = None
        if not self.answered:
            self._fail(1002, "no hello in time")

    def _fail(self, code: int, reason: str) -> None:
        if self.counters is not None:
            self.counters.add("v1_protocol_errors")
        _log.debug("wsglue.v1 protocol error from {sid}: {reason}", sid=shortId(self.sid), reason=reason)
        self.conn.close(code, reason)

    def _hello(self, clientName: str, resume: Optional[Tuple[Tuple[str, int], Tuple[str, int]]]) -> None:
        registry = self.registry
        record = registry.record(self.sid)
        if record is None:
            return  # closing already
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if record.state is None:
            record.state = {}
        state = record.state
        clients: Dict[str, ClientIds] = state.setdefault("clients", {})
        _forgetIdle(clients, registry.history.clock.seconds(), registry.history.ttl)
        client = clients.get(clientName)
        if client is None:
            client = clients[clientName] = ClientIds()
        client.connections += 1
        self._client = client
        self._clients = clients
        self._clientName = clientName
        if getattr(registry, "streamed", False):
            self._helloing = True
            self._queue = []
            d = registry.openStreams(self.sid, resume)
            d.addCallbacks(self._opened, self._notOpened, callbackArgs=(resume is not None,))
            return
        session = registry.sessionStream(self.sid, create=True)
        broadcast = registry.broadcastStream
        gaps: Optional[Tuple[List[Tuple[int, Message]], List[Tuple[int, Message]]]] = None
        if resume is not None:
            sessionGap = session.since(*resume[0])
            broadcastGap = broadcast.since(*resume[1])
            if sessionGap is not None and broadcastGap is not None:
                gaps = (sessionGap, broadcastGap)
        if resume is not None and self.counters is not None:
            self.counters.add("resumes:true" if gaps is not None else "resumes:false")
        send = self.conn.sendRaw
        send(welcomeFrame(gaps is not None, session.position(), broadcast.position()))
        self.answered = True
        if gaps is not None:
            for kind, gap in zip("sb", gaps):
                for offset, message in gap:
                    send(streamFrame(kind, offset, message))

    def _opened(self, result: Any, resuming: bool) -> None:
        """
        Redis answered the C{hello} (L{wsglue.cluster.registry.
        ClusterRegistry.openStreams}): the welcome, the replay, then what
        arrived meanwhile, then the client's m frames that waited.
        """
        self._helloing = False
        if not self._open:
            return
        session, broadcast, gaps = result
        if resuming and self.counters is not None:
            self.counters.add("resumes:true" if gaps is not None else "resumes:false")
        send = self.conn.sendRaw
        send(welcomeFrame(gaps is not None, session, broadcast))
        self.answered = True
        self._last = {"s": session, "b": broadcast}
        if gaps is not None:
            for kind, gap in zip("sb", gaps):
                for offset, message in gap:
                    send(streamFrame(kind, offset, message))
        queue, self._queue = self._queue or [], None
        for kind, epoch, offset, framed in queue:
            self.deliverNumbered(kind, epoch, offset, framed)
        inbox, self._inbox = self._inbox or [], None
        for messageId, data in inbox:
            self._message(messageId, data)

    def _notOpened(self, failure: Any) -> None:
        self._helloing = False
        self._queue = None
        if self._open:
            _log.info("hello of {sid} not answered: {why}", sid=shortId(self.sid), why=failure.getErrorMessage())
            self.conn.close(1013, "Redis unreachable, try again later")

    def _message(self, messageId: int, data: Message) -> None:
        client = self._client
        assert client is not None
        if self._clientName is not None and getattr(self.registry, "streamed", False):
            self._messageThroughRedis(client, messageId, data)
            return
        if client.take(messageId):
            self.handler.received(self.sid, self.conn, data)
        self.conn.sendRaw(ackFrame(messageId))

    def _messageThroughRedis(self, client: ClientIds, messageId: int, data: Message) -> None:
        """
        The ids a client sent are kept in Redis, so that a resume on
        another process does not double them; while Redis is unreachable,
        in this process.  Handled and acked in the order received.
        """
        assert self._clientName is not None
        d = self.registry.takeClientId(self.sid, self._clientName, messageId)
        d.addErrback(lambda f: client.take(messageId))
        chain = self._chain if self._chain is not None else defer.succeed(None)
        chain.addCallback(lambda _: d)
        chain.addCallback(self._taken, client, messageId, data)
        chain.addErrback(lambda f: _log.failure("handling a message of {sid} failed", f, sid=shortId(self.sid)))
        self._chain = chain

    def _taken(self, isNew: Any, client: ClientIds, messageId: int, data: Message) -> None:
        client.take(messageId)
        if isNew:
            self.handler.received(self.sid, self.conn, data)
        if self._open:
            self.conn.sendRaw(ackFrame(messageId))


__all__ = [
    "SUBPROTOCOL",
    "ClientIds",
    "ProtocolError",
    "SessionProtocol",
    "ackFrame",
    "parseHello",
    "parseMessage",
    "replyFrame",
    "streamFrame",
    "welcomeFrame",
]
