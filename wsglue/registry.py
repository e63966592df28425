"""
The session registry: which connections each session holds right now.

One registry exists per service.  The WebSocket factory owns it, protocols
add and remove themselves, and application handlers use it to reach browsers
(``send`` to one session, ``broadcast`` to all).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, Union

from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger

from wsglue.continuity import streamFrame
from wsglue.cookies import shortId
from wsglue.streams import History, Stream

Message = Union[str, bytes]

_log = Logger()


class IConnection(Protocol):
    """
    What the registry needs of a connection.  The WebSocket protocol provides
    it; tests may provide it with a plain object.
    """

    def send(self, message: Message) -> bool:
        """
        Send C{message}; C{str} as a text frame, C{bytes} as a binary one.
        Return whether the connection was open to take it.
        """

    def sendPrepared(self, prepared: PreparedMessage) -> bool:
        """
        Send a frame built once for many connections.
        """

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Start the closing handshake.
        """


def forLog(message: Message, limit: int = 200) -> str:
    """
    How a message appears in C{--verbose} logs: text as it is (C{ping}, as
    SPEC section 9 shows), but with control characters escaped so a client
    cannot forge log lines, and cut at C{limit} characters; binary as its
    length.
    """
    if isinstance(message, str):
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message[:limit])
        return text + ("..." if len(message) > limit else "")
    return f"<{len(message)} bytes>"


def prepare(message: Message) -> PreparedMessage:
    """
    Build the server-to-client frame for C{message} once, so that it can be
    written to any number of connections without framing it again.
    """
    if isinstance(message, str):
        return PreparedMessage(message.encode("utf-8"), False, False, True)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return PreparedMessage(bytes(message), True, False, True)
    # bytes(5) would be five NUL bytes: a wrong type is the caller's bug.
    raise TypeError(f"can only send str or bytes, not {type(message).__name__}")


class SessionRecord(Dict[IConnection, None]):
    """
    What the registry holds for one session in this process: its open
    connections (the record is a C{dict} of them, in the order they opened,
    so sends walk it directly) and the session's own state.

    It exists while the session has a connection here; one whose
    C{state} holds something (a session stream, the ids its clients sent)
    is kept for C{--history-ttl} after the last connection closed, so that
    a client coming back finds its history (see L{SessionRegistry.remove}).

    @ivar sid: the session id.
    @ivar state: per-session values for the parts of wsglue that keep any
        (C{None} until one does, so an idle session costs nothing more):
        C{"stream"}, the session's L{Stream}; C{"clients"}, what
        L{wsglue.continuity} keeps of each client.
    """

    __slots__ = ("sid", "state")

    def __init__(self, sid: str) -> None:
        dict.__init__(self)
        self.sid = sid
        self.state: Optional[Dict[str, Any]] = None

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"<SessionRecord {shortId(self.sid)}: {len(self)} connections>"


class SessionRegistry:
    """
    Sessions and their open connections, in this process.

    A session may hold several connections at once (browser tabs share the
    cookie).  A session is present exactly while it holds at least one
    connection.

    With continuity on (L{configure} with a L{History}), C{send} and
    C{broadcast} number each message in the session's stream or the
    broadcast stream, for the C{wsglue.v1} clients that come back
    (L{wsglue.continuity}).  Presence (L{online}, L{watchPresence}) lasts
    a grace period beyond the last connection, so that a reload is not a
    departure.
    """

    def __init__(self) -> None:
        # sid -> its record: {connection: None}; a dict keeps insertion
        # order, so sends reach the connections of a session in the order
        # they opened.
        self._sessions: Dict[str, SessionRecord] = {}
        self._count = 0
        # --verbose: log what goes out through send and broadcast.
        self.verbose = False
        # Continuity (see configure): off until a History is given.
        self.history: Optional[History] = None
        self.broadcastStream: Optional[Stream] = None
        self.presenceGrace = 30.0
        self.clock: Any = None
        # Records of sessions whose last connection closed, kept for the
        # history ttl for the clients that come back: sid -> (record, until),
        # in the order they closed (so in the order they expire).
        self._dormant: "OrderedDict[str, Tuple[SessionRecord, float]]" = OrderedDict()
        self._dormantCall: Any = None
        # Sessions within their presence grace: sid -> when they end.
        self._departing: "OrderedDict[str, float]" = OrderedDict()
        self._departingCall: Any = None
        self._started: Optional[Callable[[str], None]] = None
        self._ended: Optional[Callable[[str], None]] = None
        self._stopped = False
        # wsglue.v1 connections open (see SessionProtocol): while there are
        # none, sends skip looking for them.
        self.v1Connections = 0

    def configure(self, history: Optional[History] = None, presenceGrace: float = 30.0, clock: Any = None) -> None:
        """
        Turn continuity on with C{history} (off when C{None} or of size 0)
        and set the presence grace, with C{clock} telling the time.
        """
        if clock is None:
            clock = history.clock if history is not None else None
        self.clock = clock
        if history is not None and history.enabled:
            self.history = history
            self.broadcastStream = history.stream()
        else:
            self.history = self.broadcastStream = None
        self.presenceGrace = presenceGrace

    def watchPresence(self, started: Optional[Callable[[str], None]], ended: Optional[Callable[[str], None]]) -> None:
        """
        Call C{started(sid)} when a session opens its first connection, and
        C{ended(sid)} once it has had none for the presence grace (a reload
        or a reconnect within it is neither).
        """
        self._started = started
        self._ended = ended

    def _now(self) -> float:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        seconds: float = self.clock.seconds()
        return seconds

    def stopTimers(self) -> None:
        """
        Cancel the registry's timers (the service is stopping); sessions
        that close from now on are neither kept nor reported ended.
        """
        self._stopped = True
        for name in ("_dormantCall", "_departingCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def startTimers(self) -> None:
        """
        Undo L{stopTimers}.
        """
        self._stopped = False

    def add(self, sid: str, conn: IConnection) -> bool:
        """
        Register C{conn} under C{sid}.  Return C{True} if this opened the
        session (it had no connection before).
        """
        conns = self._sessions.get(sid)
        isNew = conns is None
        if conns is None:
            kept = self._dormant.pop(sid, None) if self._dormant else None
            conns = self._sessions[sid] = kept[0] if kept is not None else SessionRecord(sid)
            if self._departing.pop(sid, None) is None and self._started is not None:
                self._started(sid)
        if conn not in conns:
            conns[conn] = None
            self._count += 1
        return isNew

    def remove(self, sid: str, conn: IConnection) -> bool:
        """
        Forget C{conn}.  Return C{True} if that closed the session (it was its
        last connection).  Unknown pairs are ignored.
        """
        conns = self._sessions.get(sid)
        if conns is None or conn not in conns:
            return False
        del conns[conn]
        self._count -= 1
        if conns:
            return False
        del self._sessions[sid]
        if self._stopped:
            return True
        now = self._now()
        history = self.history
        if conns.state is not None and history is not None and history.ttl > 0:
            self._dormant[sid] = (conns, now + history.ttl)
            self._expireDormant(now)
        if self.presenceGrace > 0:
            self._departing[sid] = now + self.presenceGrace
            self._expireDeparting(now)
        elif self._ended is not None:
            self._ended(sid)
        return True

    def _expireDormant(self, now: Optional[float] = None) -> None:
        """
        Forget the kept records whose time is up, and set the timer for
        the next one.
        """
        now = self._now() if now is None else now
        dormant = self._dormant
        while dormant:
            sid, (_, until) = next(iter(dormant.items()))
            if until > now:
                if self._dormantCall is None and not self._stopped:
                    self._dormantCall = self.clock.callLater(until - now, self._dormantDue)
                return
            del dormant[sid]

    def _dormantDue(self) -> None:
        self._dormantCall = None
        self._expireDormant()

    def _expireDeparting(self, now: Optional[float] = None) -> None:
        """
        End the sessions whose presence grace is over, and set the timer
        for the next one: only when someone is told of ends (L{online}
        reads the deadlines itself).
        """
        now = self._now() if now is None else now
        departing = self._departing
        while departing:
            sid, until = next(iter(departing.items()))
            if until > now:
                if self._ended is not None and self._departingCall is None and not self._stopped:
                    self._departingCall = self.clock.callLater(until - now, self._departingDue)
                return
            del departing[sid]
            if self._ended is not None:
                self._ended(sid)

    def _departingDue(self) -> None:
        self._departingCall = None
        self._expireDeparting()

    def sessionStream(self, sid: str, create: bool = False) -> Optional[Stream]:
        """
        The session stream of C{sid}: kept while the session has a
        connection here and for the history ttl after its last closed.

        @param create: make it if the session has a connection but no
            stream yet.
        @return: C{None} when continuity is off, or the session has no
            stream (and C{create} is false or it has no connection).
        """
        if self.history is None:
            return None
        record = self._sessions.get(sid)
        if record is None:
            kept = self._dormant.get(sid)
            if kept is None or kept[1] <= self._now():
                return None
            record = kept[0]
        state = record.state
        stream: Optional[Stream] = state.get("stream") if state is not None else None
        if stream is None and create and sid in self._sessions:
            if state is None:
                state = record.state = {}
            stream = state["stream"] = self.history.stream()
        return stream

    def online(self, sid: str) -> bool:
        """
        Whether session C{sid} is present: it has a connection, or had one
        less than the presence grace ago.
        """
        if sid in self._sessions:
            return True
        until = self._departing.get(sid)
        return until is not None and until > self._now()

    def onlineCount(self) -> int:
        """
        How many sessions are present (see L{online}).
        """
        if self._departing:
            self._expireDeparting()
        return len(self._sessions) + len(self._departing)

    def send(self, sid: str, message: Message) -> int:
        """
        Send C{message} to every connection of session C{sid}; with
        continuity on, append it to the session's stream first (kept while
        the session has none of its connections open, for a client to
        resume from).

        @return: the number of connections reached; 0 for an unknown session.
        """
        conns = self._sessions.get(sid)
        if self.history is not None:
            stream = self.sessionStream(sid)
            if stream is not None:
                prepared = prepare(message)
                offset = stream.append(message)
                reached = self._deliver(conns or (), prepared, message, "s", offset)
                if self.verbose:
                    self._logSend(message, sid, reached)
                return reached
            if not conns:
                return 0
            # No stream: a wsglue.v1 connection here has not said hello
            # (that makes the stream), and gets nothing until it does.
            prepared = prepare(message)
            reached = sum(
                conn.sendPrepared(prepared) for conn in list(conns) if getattr(conn, "continuity", None) is None
            )
            if self.verbose:
                self._logSend(message, sid, reached)
            return reached
        if not conns:
            return 0
        prepared = prepare(message)
        reached = sum(conn.sendPrepared(prepared) for conn in list(conns))
        if self.verbose:
            self._logSend(message, sid, reached)
        return reached

    def _logSend(self, message: Message, sid: str, reached: int) -> None:
        _log.info(
            "==> {text} to {sid} ({n} connections)",
            text=forLog(message),
            sid=shortId(sid),
            n=reached,
        )

    def _deliver(self, conns: Any, prepared: PreparedMessage, message: Message, kind: str, offset: int) -> int:
        """
        Send a stream's message to C{conns}: the plain frame C{prepared}
        to plain connections, the C{wsglue.v1} frame (built once, when the
        first such connection is met) to the others.
        """
        if not self.v1Connections:
            return sum(conn.sendPrepared(prepared) for conn in list(conns))
        framed: Optional[PreparedMessage] = None
        reached = 0
        for conn in list(conns):
            session = getattr(conn, "continuity", None)
            if session is None:
                reached += conn.sendPrepared(prepared)
            else:
                if framed is None:
                    framed = prepare(streamFrame(kind, offset, message))
                reached += session.deliver(framed)
        return reached

    def broadcast(self, message: Message) -> int:
        """
        Send C{message} to every connection of every session; with
        continuity on, append it to the broadcast stream first.  Each
        frame (plain, and C{wsglue.v1}) is built once.

        @return: the number of connections reached.
        """
        stream = self.broadcastStream
        if stream is None and not self._count:
            return 0
        prepared = prepare(message)
        reached = 0
        if stream is not None:
            offset = stream.append(message)
        if stream is None or not self.v1Connections:
            # Copies, since a send may close a connection and change the
            # registry; each session's is taken as it is reached, so that the
            # first frames leave before the loop has walked every session.
            for conns in list(self._sessions.values()):
                for conn in list(conns):
                    reached += conn.sendPrepared(prepared)
        else:
            framed: Optional[PreparedMessage] = None
            for conns in list(self._sessions.values()):
                for conn in list(conns):
                    session = getattr(conn, "continuity", None)
                    if session is None:
                        reached += conn.sendPrepared(prepared)
                    else:
                        if framed is None:
                            framed = prepare(streamFrame("b", offset, message))
                        reached += session.deliver(framed)
        if self.verbose:
            _log.info("==> {text} (broadcast to {n} connections)", text=forLog(message), n=reached)
        return reached

    def close(self, sid: str, code: int = 1000, reason: str = "") -> int:
        """
        Close every connection of session C{sid}.

        @return: the number of connections asked to close.
        """
        conns = list(self._sessions.get(sid, ()))
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def closeAll(self, code: int = 1000, reason: str = "") -> int:
        """
        Close every connection of every session (used when the service stops).

        @return: the number of connections asked to close.
        """
        conns = list(self.allConnections())
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def record(self, sid: str) -> Optional[SessionRecord]:
        """
        The L{SessionRecord} of session C{sid}, or C{None} while it has no
        connection in this process.
        """
        return self._sessions.get(sid)

    def sessions(self) -> List[str]:
        """
        The ids of the sessions holding at least one connection.
        """
        return list(self._sessions)

    def connections(self, sid: str) -> List[IConnection]:
        """
        The open connections of session C{sid} (empty if unknown).
        """
        return list(self._sessions.get(sid, ()))

    def allConnections(self) -> Iterator[IConnection]:
        """
        Every registered connection.
        """
        for conns in self._sessions.values():
            yield from conns

    @property
    def connectionCount(self) -> int:
        """
        The number of registered connections, all sessions together.
        """
        return self._count

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sessions))
