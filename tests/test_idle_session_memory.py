"""
What an idle C{wsglue.v1} session holds: a session stream and a client's
ids allocate their containers only once something is sent (an empty
C{deque} is 760 bytes and an empty C{set} 216 on CPython 3.11: 1.7 KiB per
session that only listens, measured by the bench at 10,000 sessions).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsglue.continuity import ClientIds
from wsglue.streams import History


class IdleClientIdsTests(SynchronousTestCase):
    """
    L{ClientIds} before and after the client's first message.
    """

    def test_nothingUntilFirstMessage(self) -> None:
        """
        A client that sent nothing holds no set and no deque; its first id
        is new, then a repeat.
        """
        ids = ClientIds()
        self.assertIsNone(ids.seen)
        self.assertIsNone(ids.order)
        self.assertTrue(ids.take(7))
        self.assertEqual(ids.seen, {7})
        self.assertFalse(ids.take(7))
        self.assertTrue(ids.take(8))


class IdleStreamTests(SynchronousTestCase):
    """
    A L{Stream} before and after its first message.
    """

    def test_nothingUntilFirstMessage(self) -> None:
        """
        A stream never sent to keeps no deque; it is empty, at offset 0,
        and its gap from its own position is empty, from a later one
        there is none.
        """
        clock = Clock()
        stream = History(10, 1000, 60, clock).stream()
        self.assertIsNone(stream._kept)
        self.assertEqual(len(stream), 0)
        self.assertEqual(stream.position(), (stream.epoch, 0))
        self.assertEqual(stream.since(stream.epoch, 0), [])
        self.assertIsNone(stream.since(stream.epoch, 1))
        clock.advance(120)
        self.assertEqual(stream.since(stream.epoch, 0), [])

    def test_firstMessage(self) -> None:
        """
        The first message is kept and replayed as before.
        """
        clock = Clock()
        stream = History(10, 1000, 60, clock).stream()
        self.assertEqual(stream.append("a"), 1)
        self.assertEqual(stream.append("b"), 2)
        self.assertEqual(len(stream), 2)
        self.assertEqual(stream.since(stream.epoch, 0), [(1, "a"), (2, "b")])
        clock.advance(61)
        self.assertIsNone(stream.since(stream.epoch, 0))
