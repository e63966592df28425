"""
The session registry: which connections each session holds right now.

One registry exists per service.  The WebSocket factory owns it, protocols
add and remove themselves, and application handlers use it to reach browsers
(``send`` to one session, ``broadcast`` to all).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Protocol, Union

from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger

from wsglue.cookies import shortId

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

    It exists exactly while the session has a connection here.  It is the
    home of what belongs to a session rather than to one connection: its
    message history and its presence are to live here.

    @ivar sid: the session id.
    @ivar state: per-session values for the parts of wsglue that keep any
        (C{None} until one does, so an idle session costs nothing more).
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
    """

    def __init__(self) -> None:
        # sid -> its record: {connection: None}; a dict keeps insertion
        # order, so sends reach the connections of a session in the order
        # they opened.
        self._sessions: Dict[str, SessionRecord] = {}
        self._count = 0
        # --verbose: log what goes out through send and broadcast.
        self.verbose = False

    def add(self, sid: str, conn: IConnection) -> bool:
        """
        Register C{conn} under C{sid}.  Return C{True} if this opened the
        session (it had no connection before).
        """
        conns = self._sessions.get(sid)
        isNew = conns is None
        if conns is None:
            conns = self._sessions[sid] = SessionRecord(sid)
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
        return True

    def send(self, sid: str, message: Message) -> int:
        """
        Send C{message} to every connection of session C{sid}.

        @return: the number of connections reached; 0 for an unknown session.
        """
        conns = self._sessions.get(sid)
        if not conns:
            return 0
        prepared = prepare(message)
        reached = sum(conn.sendPrepared(prepared) for conn in list(conns))
        if self.verbose:
            _log.info(
                "==> {text} to {sid} ({n} connections)",
                text=forLog(message),
                sid=shortId(sid),
                n=reached,
            )
        return reached

    def broadcast(self, message: Message) -> int:
        """
        Send C{message} to every connection of every session.  The frame is
        built once.

        @return: the number of connections reached.
        """
        if not self._count:
            return 0
        prepared = prepare(message)
        reached = 0
        # Copies, since a send may close a connection and change the
        # registry; each session's is taken as it is reached, so that the
        # first frames leave before the loop has walked every session.
        for conns in list(self._sessions.values()):
            for conn in list(conns):
                reached += conn.sendPrepared(prepared)
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
