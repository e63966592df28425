"""
Sample application handlers that the tests load with
C{--handler tests.handlers_for_tests:NAME}.
"""

from __future__ import annotations

import gc
from typing import Any, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed

from wsglue.registry import Message, SessionRegistry


class HandlerError(Exception):
    """
    What the sample handlers raise on purpose.
    """


class Recorder:
    """
    Records every call, and answers according to the message:

      - C{echo X}: returns C{echo: X};
      - C{later X}: returns a Deferred that fires with C{later: X} on the
        next reactor turn;
      - C{now X}: returns an already-fired Deferred with C{now: X};
      - C{none}: returns None (nothing is sent);
      - C{boom}: raises L{HandlerError};
      - C{fail}: returns a failed Deferred;
      - C{session X}: sends C{X} to its whole session through the registry;
      - C{close}: closes its connection with 4000;
      - bytes: returns them reversed (a binary answer).
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.events: List[Tuple[Any, ...]] = []

    def opened(self, sid: str, conn: Any) -> None:
        self.events.append(("opened", sid, conn))

    def closed(self, sid: str, conn: Any) -> None:
        self.events.append(("closed", sid, conn))

    def received(self, sid: str, conn: Any, message: Message) -> Any:
        self.events.append(("received", sid, conn, message))
        if isinstance(message, bytes):
            return message[::-1]
        verb, _, rest = message.partition(" ")
        if verb == "echo":
            return "echo: " + rest
        if verb == "later":
            d: Deferred = Deferred()
            reactor.callLater(0, d.callback, "later: " + rest)
            return d
        if verb == "now":
            return succeed("now: " + rest)
        if verb == "boom":
            raise HandlerError("boom")
        if verb == "fail":
            return fail(HandlerError("fail"))
        if verb == "session":
            self.registry.send(sid, rest)
            return None
        if verb == "close":
            conn.close(4000, "asked to close")
            return None
        return None


class BrokenOpened(Recorder):
    """
    Raises in C{opened}; otherwise a L{Recorder}.
    """

    def opened(self, sid: str, conn: Any) -> None:
        Recorder.opened(self, sid, conn)
        raise HandlerError("opened")


class BrokenClosed(Recorder):
    """
    Raises in C{closed}; otherwise a L{Recorder}.
    """

    def closed(self, sid: str, conn: Any) -> None:
        Recorder.closed(self, sid, conn)
        raise HandlerError("closed")


class OnlyReceived:
    """
    A handler with C{received} alone: C{opened}/C{closed} are optional.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        return "only"


def makeRecorder(registry: SessionRegistry) -> Recorder:
    """
    A factory function (not a class) is a valid handler factory too.
    """
    return Recorder(registry)


class Namespace:
    """
    Holds a handler one attribute deeper (C{Namespace.Inner}).
    """

    Inner = Recorder


NOT_CALLABLE = 42


def failingFactory(registry: SessionRegistry) -> None:
    """
    A handler factory that cannot build its handler.
    """
    raise HandlerError("the backend is unreachable")


class Collector:
    """
    Answers C{gc} with the process's collector settings: its thresholds
    and how many objects are frozen (C{"5000 20 10 frozen=61234"}).
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def opened(self, sid: str, conn: Any) -> None:
        pass

    def closed(self, sid: str, conn: Any) -> None:
        pass

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if message != "gc":
            return None
        return " ".join(map(str, gc.get_threshold())) + f" frozen={gc.get_freeze_count()}"


class Presence(Recorder):
    """
    A L{Recorder} that also records C{sessionStarted} and C{sessionEnded}.
    """

    def sessionStarted(self, sid: str) -> None:
        self.events.append(("started", sid))

    def sessionEnded(self, sid: str) -> None:
        self.events.append(("ended", sid))


# Where SourceRecorder writes (an environment variable, not a WSGLUE_ one:
# those must name options).
SOURCE_RECORD_VARIABLE = "SOURCE_RECORD_FOLDER"


class SourceRecorder:
    """
    Records each message handed to the registry to send or broadcast (by
    the API or a source) as a line of C{$SOURCE_RECORD_FOLDER/PID}, written
    at once (a worker killed with SIGKILL loses none of its lines); the
    messages themselves go on as usual.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        import os

        self.registry = registry
        folder = os.environ[SOURCE_RECORD_VARIABLE]
        self.fd = os.open(os.path.join(folder, str(os.getpid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for name in ("send", "broadcast", "sendCounted", "broadcastCounted"):
            method = getattr(registry, name, None)
            if method is not None:
                setattr(registry, name, self._recording(method, name.startswith("broadcast")))

    def _recording(self, method: Any, broadcast: bool) -> Any:
        import os

        def record(*args: Any) -> Any:
            message = args[0] if broadcast else args[1]
            if isinstance(message, bytes):
                message = "b:" + message.hex()
            os.write(self.fd, f"{message}\n".encode("utf-8"))
            return method(*args)

        return record

    def received(self, sid: str, conn: Any, message: Any) -> None:
        return None
