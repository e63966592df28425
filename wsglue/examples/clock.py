"""
An example handler that pushes data on its own: the server time, to every
session, once a second, through the registry.

    twistd -n wsglue --handler wsglue.examples.clock:Clock --broadcast-interval 0

It also answers ``time`` with the time, on the connection that asked, and
greets each new connection with ``hello <first 8 characters of its session>``
sent through ``registry.send``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet.task import LoopingCall

from wsglue.registry import Message, SessionRegistry


class Clock:
    """
    Broadcast C{time <ISO 8601 UTC>} every C{interval} seconds while at least
    one connection is open.
    """

    interval = 1.0

    def __init__(self, registry: SessionRegistry, clock: Any = None, now: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.now = now
        self._tick = LoopingCall(self.tick)
        if clock is not None:
            self._tick.clock = clock

    def stamp(self) -> str:
        return "time " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now()))

    def tick(self) -> int:
        return self.registry.broadcast(self.stamp())

    def opened(self, sid: str, conn: Any) -> None:
        self.registry.send(sid, "hello " + sid[:8])
        if not self._tick.running:
            self._tick.start(self.interval, now=False)

    def closed(self, sid: str, conn: Any) -> None:
        if not len(self.registry) and self._tick.running:
            self._tick.stop()

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if message == "time":
            return self.stamp()
        return None
