"""
Tests for L{wsglue.streams}: numbering, positions, and the replay of
exactly a gap or nothing, under each bound of the history.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsglue.streams import History, Stream, messageSize


def stream(size: int = 100, bytes: int = 262144, ttl: float = 120.0) -> Tuple[Stream, Clock]:
    clock = Clock()
    return History(size, bytes, ttl, clock).stream(), clock


class NumberingTests(SynchronousTestCase):
    """
    Offsets and positions.
    """

    def test_emptyPosition(self) -> None:
        """
        A stream with no message yet is at offset 0 of its epoch.
        """
        s, _ = stream()
        self.assertEqual(s.position(), (s.epoch, 0))

    def test_offsetsUpByOne(self) -> None:
        """
        Each message appended gets the next offset, from 1.
        """
        s, _ = stream()
        self.assertEqual([s.append(m) for m in ("a", b"b", "c")], [1, 2, 3])
        self.assertEqual(s.position(), (s.epoch, 3))

    def test_offsetsGoOnPastTheBounds(self) -> None:
        """
        Dropping old messages does not renumber: offsets keep going up by
        one.
        """
        s, _ = stream(size=2)
        for i in range(10):
            s.append(str(i))
        self.assertEqual(s.position()[1], 10)
        self.assertEqual(len(s), 2)

    def test_epochsDiffer(self) -> None:
        """
        Every stream of a history has an epoch of its own, and another
        history (another process start) has others again.
        """
        h = History(clock=Clock())
        epochs = {h.stream().epoch for _ in range(3)} | {History(clock=Clock()).stream().epoch}
        self.assertEqual(len(epochs), 4)

    def test_enabled(self) -> None:
        """
        A history size of 0 turns continuity off.
        """
        self.assertTrue(History(1, clock=Clock()).enabled)
        self.assertFalse(History(0, clock=Clock()).enabled)

    def test_messageSize(self) -> None:
        """
        Text counts its UTF-8 bytes; binary its length.
        """
        self.assertEqual(messageSize("é"), 2)
        self.assertEqual(messageSize(b"\x00\x01"), 2)


class SinceTests(SynchronousTestCase):
    """
    L{Stream.since}: every case of a gap wholly kept or not.
    """

    # (what the case is, history bounds, messages appended as
    # (seconds since start, message), seconds at the question, the position
    # asked about as (same epoch?, offset), the answer: offsets or None).
    CASES: List[Tuple[str, dict, List[Tuple[float, Any]], float, Tuple[bool, int], Optional[List[int]]]] = [
        ("same position, empty stream", {}, [], 0, (True, 0), []),
        ("same position", {}, [(0, "a"), (0, "b")], 0, (True, 2), []),
        ("same position, all expired", {"ttl": 10}, [(0, "a")], 100, (True, 1), []),
        ("same position, all trimmed", {"size": 1}, [(0, "a"), (0, "b")], 0, (True, 2), []),
        ("gap inside window", {}, [(0, "a"), (1, "b"), (2, "c")], 3, (True, 1), [2, 3]),
        ("whole stream from 0", {}, [(0, "a"), (1, "b")], 2, (True, 0), [1, 2]),
        ("older than ttl", {"ttl": 10}, [(0, "a"), (5, "b"), (9, "c")], 10, (True, 0), None),
        ("ttl: the rest still whole", {"ttl": 10}, [(0, "a"), (5, "b"), (9, "c")], 10, (True, 1), [2, 3]),
        ("ttl reached exactly", {"ttl": 10}, [(0, "a"), (0, "b")], 10, (True, 1), None),
        ("trimmed by size", {"size": 2}, [(0, "a"), (0, "b"), (0, "c")], 0, (True, 0), None),
        ("size: the rest still whole", {"size": 2}, [(0, "a"), (0, "b"), (0, "c")], 0, (True, 1), [2, 3]),
        ("trimmed by bytes", {"bytes": 4}, [(0, "aa"), (0, "bb"), (0, "cc")], 0, (True, 0), None),
        ("bytes: the rest still whole", {"bytes": 4}, [(0, "aa"), (0, "bb"), (0, "cc")], 0, (True, 1), [2, 3]),
        ("bytes count UTF-8", {"bytes": 4}, [(0, "éé"), (0, "é")], 0, (True, 0), None),
        ("one message over the byte bound", {"bytes": 4}, [(0, "a"), (0, "toolong")], 0, (True, 1), None),
        ("no byte bound", {"bytes": 0}, [(0, "x" * 1000), (0, "y" * 1000)], 0, (True, 0), [1, 2]),
        ("another epoch", {}, [(0, "a")], 0, (False, 0), None),
        ("another epoch, same offset", {}, [(0, "a")], 0, (False, 1), None),
        ("an offset never reached", {}, [(0, "a")], 0, (True, 2), None),
        ("a negative offset", {}, [(0, "a")], 0, (True, -1), None),
        ("ttl 0 keeps nothing", {"ttl": 0}, [(0, "a")], 0, (True, 0), None),
    ]

    def test_cases(self) -> None:
        """
        Each case answers exactly the gap, or C{None}.
        """
        for name, bounds, appended, at, (sameEpoch, offset), expected in self.CASES:
            s, clock = stream(**bounds)
            messages = {}
            for when, message in appended:
                clock.advance(when - clock.seconds())
                messages[s.append(message)] = message
            clock.advance(at - clock.seconds())
            epoch = s.epoch if sameEpoch else s.epoch + "x"
            got = s.since(epoch, offset)
            want = None if expected is None else [(o, messages[o]) for o in expected]
            self.assertEqual(got, want, name)

    def test_binaryKept(self) -> None:
        """
        Binary messages come back as the bytes they were.
        """
        s, _ = stream()
        s.append(b"\x00\xff")
        self.assertEqual(s.since(s.epoch, 0), [(1, b"\x00\xff")])

    def test_bytesAccounted(self) -> None:
        """
        The bytes kept go down as messages are dropped, by any bound.
        """
        s, clock = stream(size=2, ttl=10)
        for m in ("aaa", "bb", "c"):
            s.append(m)
        self.assertEqual(s.keptBytes, 3)
        clock.advance(10)
        s.append("dddd")
        self.assertEqual((len(s), s.keptBytes), (1, 4))
