"""
The wsglue handler of C{python -m bench.recovery}, loaded with
C{--handler bench.recovery.handler:Scenarios}: the same commands as the
Socket.IO peer (C{bench/peers/socketio/server.js}).

- C{stream <count> <rate> <delay-ms>}: C{n 1} … C{n <count>} to the
  session that asked (C{registry.send}: its session stream), C{rate} a
  second, the first after C{delay-ms}; answered C{started}.  The timer runs
  in the process that took the command; in a cluster C{registry.send}
  reaches the session wherever it is connected.
- C{bstart <rate>}: C{b <k>} to everyone (C{registry.broadcast}: the
  broadcast stream), C{rate} a second, until C{bstop}; answered C{ok}.
- anything else: C{ok}.
"""

from __future__ import annotations

from typing import Any, Optional, Set

from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from wsglue.registry import Message, SessionRegistry


class Scenarios:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.clock: Any = reactor
        self.loops: Set[LoopingCall] = set()
        self.broadcast: Optional[LoopingCall] = None
        self.broadcastNumber = 0

    def _stream(self, sid: str, count: int, rate: float) -> None:
        numbers = iter(range(1, count + 1))

        def one() -> None:
            k = next(numbers, None)
            if k is None:
                loop.stop()
                self.loops.discard(loop)
                return
            self.registry.send(sid, f"n {k}")

        loop = LoopingCall(one)
        self.loops.add(loop)
        loop.start(1 / rate, now=False)

    def _broadcastOne(self) -> None:
        self.broadcastNumber += 1
        self.registry.broadcast(f"b {self.broadcastNumber}")

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if isinstance(message, bytes):
            return None
        verb, *args = message.split()
        if verb == "stream" and len(args) == 3:
            count, rate, delay = int(args[0]), float(args[1]), float(args[2])
            self.clock.callLater(delay / 1000, self._stream, sid, count, rate)
            return "started"
        if verb == "bstart" and len(args) == 1:
            if self.broadcast is None:
                self.broadcast = LoopingCall(self._broadcastOne)
                self.broadcast.start(1 / float(args[0]), now=False)
            return "ok"
        if verb == "bstop":
            if self.broadcast is not None and self.broadcast.running:
                self.broadcast.stop()
            self.broadcast = None
            return "ok"
        return "ok"
