"""
Application message handlers.

A handler is built once per service as C{factory(registry)} and may define
any of::

    opened(sid, conn)             a connection of session sid opened
    received(sid, conn, message)  message is str (text) or bytes (binary);
                                  a result that is not None (str, bytes or a
                                  Deferred firing with one) is sent on conn
    closed(sid, conn)             that connection closed
    sessionStarted(sid)           the session's first connection opened
    sessionEnded(sid)             the session has had no connection for
                                  --presence-grace seconds

C{conn} offers C{send(message)} and C{close(code=1000, reason="")}.  An
exception raised by a handler is logged with its traceback and affects no
other connection.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.cookies import shortId
from wsglue.registry import Message, SessionRegistry

_log = Logger()


class PingPong:
    """
    The default handler: C{ping} is answered C{pong}, any other text C{ok};
    binary messages are refused with close code 1003.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if isinstance(message, bytes):
            conn.close(1003, "binary messages are not supported")
            return None
        return "pong" if message == "ping" else "ok"


def loadHandler(spec: str) -> Callable[[SessionRegistry], Any]:
    """
    Import the handler factory named by C{spec}, C{"package.module:Name"}.

    @raise ValueError: with a message fit for a user, if C{spec} does not
        name a callable.
    """
    moduleName, colon, name = spec.partition(":")
    if not (colon and moduleName and name):
        raise ValueError(f"--handler must be MODULE:NAME, not {spec!r}")
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise ValueError(f"--handler {spec}: cannot import {moduleName}: {e}")
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--handler {spec}: {moduleName} has no {name}")
    if not callable(obj):
        raise ValueError(f"--handler {spec}: {name} is not callable")
    factory: Callable[[SessionRegistry], Any] = obj
    return factory


class HandlerAdapter:
    """
    Calls a handler's optional methods on behalf of the protocol, sends what
    C{received} returns and contains whatever the handler raises.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self._opened = getattr(handler, "opened", None)
        self._received = getattr(handler, "received", None)
        self._closed = getattr(handler, "closed", None)
        self._sessionStarted = getattr(handler, "sessionStarted", None)
        self._sessionEnded = getattr(handler, "sessionEnded", None)

    @property
    def wantsPresence(self) -> bool:
        """
        Whether the handler is told when sessions start and end.
        """
        return self._sessionStarted is not None or self._sessionEnded is not None

    def sessionStarted(self, sid: str) -> None:
        if self._sessionStarted is not None:
            self._call("sessionStarted", sid, self._sessionStarted, sid)

    def sessionEnded(self, sid: str) -> None:
        if self._sessionEnded is not None:
            self._call("sessionEnded", sid, self._sessionEnded, sid)

    def opened(self, sid: str, conn: Any) -> None:
        if self._opened is not None:
            self._call("opened", sid, self._opened, sid, conn)

    def closed(self, sid: str, conn: Any) -> None:
        if self._closed is not None:
            self._call("closed", sid, self._closed, sid, conn)

    def received(self, sid: str, conn: Any, message: Message) -> None:
        if self._received is None:
            return
        try:
            result = self._received(sid, conn, message)
        except Exception:
            _log.failure("handler failed in received() for {sid}", sid=shortId(sid))
            return
        if result is None:
            return
        if isinstance(result, (str, bytes)):
            conn.send(result)
            return
        d = maybeDeferred(lambda: result)
        d.addCallback(self._reply, conn)
        d.addErrback(self._failed, "received", sid)

    def _reply(self, result: Optional[Message], conn: Any) -> None:
        if result is not None:
            conn.send(result)

    def _failed(self, failure: Failure, where: str, sid: str) -> None:
        _log.failure(
            "handler failed in {where}() for {sid}",
            failure,
            where=where,
            sid=shortId(sid),
        )

    def _call(self, where: str, sid: str, method: Callable, *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self._failed(Failure(), where, sid)
