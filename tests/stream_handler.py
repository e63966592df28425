"""
A handler for the page's continuity tests, loaded by daemons with
C{--handler tests.stream_handler:NumberedStream}: each session gets a
numbered stream (C{n 1}, C{n 2}, …) through C{registry.send}, 50 messages
a second from its first connection on, and a few text commands.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Set

from twisted.internet.task import LoopingCall

from wsglue.registry import Message, SessionRegistry

RATE = 50


class NumberedStream:
    """
    Streams C{n <k>} to every session, C{k} from 1, at L{RATE} a second.
    Commands: C{ping} → C{pong}; C{drop} aborts the TCP connection it came
    on (no close frame: the network dropped); C{hold} does too, and aborts
    every new connection of that session (an outage) until any session
    sends C{release}; C{count <text>} →
    C{count <text> = <times the handler took <text>>}; anything else is
    counted and answered C{ok}.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.loops: Dict[str, LoopingCall] = {}
        self.taken: Counter = Counter()
        self.holding: Set[str] = set()

    def opened(self, sid: str, conn: Any) -> None:
        if sid in self.holding:
            conn.transport.abortConnection()
            return
        if sid in self.loops:
            return
        numbers = iter(range(1, 10**9))
        loop = LoopingCall(lambda: self.registry.send(sid, f"n {next(numbers)}"))
        self.loops[sid] = loop
        loop.start(1 / RATE, now=False)

    def sessionEnded(self, sid: str) -> None:
        loop = self.loops.pop(sid, None)
        if loop is not None and loop.running:
            loop.stop()

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if isinstance(message, bytes):
            return None
        if message == "ping":
            return "pong"
        if message in ("drop", "hold"):
            if message == "hold":
                self.holding.add(sid)
            conn.transport.abortConnection()
            return None
        if message == "release":
            self.holding.clear()
            return "ok"
        verb, _, rest = message.partition(" ")
        if verb == "count":
            return f"count {rest} = {self.taken[rest]}"
        self.taken[message] += 1
        return "ok"
