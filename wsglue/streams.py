"""
Numbered message streams kept in memory: a session's stream and the
broadcast stream, each with an epoch, offsets that go up by one per
message, and a bounded history that a client coming back can be replayed
from.

A L{History} holds the bounds (messages, bytes, seconds) and the clock, and
makes the streams; a L{Stream} numbers what is appended to it and answers
L{Stream.since} with exactly the messages after a position, or C{None} when
any of them is no longer kept.  Never a part: a client that gets C{None}
resynchronises instead of being replayed a gap with a hole in it.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any, Deque, List, Optional, Tuple, Union

Message = Union[str, bytes]
Position = Tuple[str, int]


def newEpoch() -> str:
    """
    A random epoch: new at each process start, so that a position from
    before a restart (whose history is gone) never matches.
    """
    return secrets.token_urlsafe(9)


def messageSize(message: Message) -> int:
    """
    The bytes C{message} occupies on the wire (UTF-8 for text), which is
    what C{--history-bytes} counts.
    """
    if isinstance(message, str):
        return len(message.encode("utf-8"))
    return len(message)


class History:
    """
    The bounds of every stream's history, and the maker of streams.

    @ivar size: the most messages kept per stream; 0 turns continuity off
        (see L{enabled}).
    @ivar bytes: the most bytes kept per stream; 0 for no byte bound (the
        size bound alone).
    @ivar ttl: seconds a message stays replayable after it was added; also
        how long a session's stream outlives its last connection.
    @ivar clock: what tells the time (the reactor; a C{Clock} in tests).
    """

    def __init__(self, size: int = 100, bytes: int = 262144, ttl: float = 120.0, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.size = size
        self.bytes = bytes
        self.ttl = ttl
        self.clock = clock
        # Every stream of this process gets an epoch of its own, made of
        # the process's random one and a count: a session stream that
        # expired and was made again must not match positions in the old.
        self._epoch = newEpoch()
        self._made = 0

    @property
    def enabled(self) -> bool:
        """
        Whether continuity is on (C{--history-size} is not 0).
        """
        return self.size > 0

    def stream(self) -> "Stream":
        """
        A new, empty stream with an epoch no other stream of this process
        had.
        """
        self._made += 1
        return Stream(f"{self._epoch}.{self._made}", self)


class Stream:
    """
    One numbered stream: offsets from 1, one more per message, under one
    epoch; the latest messages kept within the bounds of its L{History}.

    @ivar epoch: the stream's epoch.
    @ivar last: the offset of the latest message (0 before the first).
    """

    __slots__ = ("epoch", "last", "_history", "_kept", "_bytes")

    def __init__(self, epoch: str, history: History) -> None:
        self.epoch = epoch
        self.last = 0
        self._history = history
        # (offset, time added, size, message), oldest first; offsets
        # consecutive up to self.last.  Made at the first message: an
        # empty deque is 760 bytes, and a session stream (one per session
        # with a wsglue.v1 connection) is most often never sent to.
        self._kept: Optional[Deque[Tuple[int, float, int, Message]]] = None
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept) if self._kept is not None else 0

    @property
    def keptBytes(self) -> int:
        """
        The bytes of the messages kept now.
        """
        return self._bytes

    def append(self, message: Message) -> int:
        """
        Number C{message} and keep it (dropping the oldest past the bounds).

        @return: its offset.
        """
        history = self._history
        size = messageSize(message)
        self.last += 1
        now = history.clock.seconds()
        kept = self._kept
        if kept is None:
            kept = self._kept = deque()
        # What the ttl dropped goes now too, so that a stream nobody
        # resumes from holds no older messages than one that is.
        horizon = now - history.ttl
        while kept and kept[0][1] <= horizon:
            self._bytes -= kept.popleft()[2]
        kept.append((self.last, now, size, message))
        self._bytes += size
        limit = history.bytes
        while len(kept) > history.size or (limit and self._bytes > limit):
            self._bytes -= kept.popleft()[2]
        return self.last

    def position(self) -> Position:
        """
        The epoch and the offset of the latest message (0 when none yet).
        """
        return self.epoch, self.last

    def since(self, epoch: str, offset: int) -> Optional[List[Tuple[int, Message]]]:
        """
        The messages after position C{(epoch, offset)}, oldest first, as
        C{(offset, message)}: exactly those the holder of that position has
        not seen.

        @return: C{None} when that gap is not wholly kept: another epoch,
            an offset this stream never reached, or a message of the gap
            dropped by the size or byte bound or older than the ttl.
        """
        if epoch != self.epoch or offset < 0 or offset > self.last:
            return None
        if offset == self.last:
            return []
        self._expire()
        kept = self._kept
        if kept is None or not kept or kept[0][0] > offset + 1:
            return None
        first = kept[0][0]
        return [(entry[0], entry[3]) for entry in list(kept)[offset + 1 - first :]]

    def _expire(self) -> None:
        """
        Drop the messages older than the ttl.
        """
        kept = self._kept
        if kept is None:
            return
        horizon = self._history.clock.seconds() - self._history.ttl
        while kept and kept[0][1] <= horizon:
            self._bytes -= kept.popleft()[2]


__all__ = ["History", "Message", "Position", "Stream", "messageSize", "newEpoch"]
