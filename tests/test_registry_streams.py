"""
Tests for the registry with continuity on: C{send} and C{broadcast} append
to the session and broadcast streams and deliver plain frames to plain
connections and C{wsglue.v1} frames to the others; a session's record
outlives its connections for the history ttl.
"""

from __future__ import annotations

import json
from typing import Any, List

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_registry import A, B, FakeConnection
from wsglue.registry import SessionRegistry, prepare
from wsglue.streams import History


def payloadOf(frame: bytes) -> bytes:
    """
    The payload of an unmasked server frame.
    """
    length = frame[1] & 0x7F
    return frame[2:] if length < 126 else frame[4:] if length == 126 else frame[10:]


class FakeSession:
    """
    Stands for a connection's L{wsglue.continuity.SessionProtocol}: takes
    stream frames once answered.
    """

    def __init__(self, answered: bool = True) -> None:
        self.answered = answered
        self.delivered: List[PreparedMessage] = []

    def deliver(self, prepared: PreparedMessage) -> bool:
        if not self.answered:
            return False
        self.delivered.append(prepared)
        return True

    def frames(self) -> List[Any]:
        return [json.loads(payloadOf(p.payloadHybi)) for p in self.delivered]


class V1Connection(FakeConnection):
    """
    A fake C{wsglue.v1} connection; the test counts it in the registry's
    C{v1Connections} as L{wsglue.continuity.SessionProtocol} does.
    """

    def __init__(self, answered: bool = True) -> None:
        FakeConnection.__init__(self)
        self.continuity = FakeSession(answered)


def registryWithHistory(size: int = 100, bytes: int = 262144, ttl: float = 120.0) -> tuple:
    clock = Clock()
    registry = SessionRegistry()
    registry.configure(History(size, bytes, ttl, clock), presenceGrace=0, clock=clock)
    return registry, clock


class SendTests(SynchronousTestCase):
    """
    C{send} with continuity on.
    """

    def test_plainBytesUnchanged(self) -> None:
        """
        A plain connection gets the same frame as without continuity.
        """
        registry, _ = registryWithHistory()
        plain = FakeConnection()
        registry.add(A, plain)
        registry.sessionStream(A, create=True)
        self.assertEqual(registry.send(A, "hi"), 1)
        self.assertEqual(plain.received(), [prepare("hi").payloadHybi])

    def test_v1Frame(self) -> None:
        """
        A C{wsglue.v1} connection gets C{{"t":"m","s":"s","o":N,"d":…}};
        offsets go up by one.
        """
        registry, _ = registryWithHistory()
        v1 = V1Connection()
        registry.add(A, v1)
        registry.v1Connections += 1
        stream = registry.sessionStream(A, create=True)
        registry.send(A, "one")
        registry.send(A, b"\x00")
        self.assertEqual(
            v1.continuity.frames(),
            [{"t": "m", "s": "s", "o": 1, "d": "one"}, {"t": "m", "s": "s", "o": 2, "b64": "AA=="}],
        )
        assert stream is not None
        self.assertEqual(stream.since(stream.epoch, 0), [(1, "one"), (2, b"\x00")])

    def test_notAnsweredNotReached(self) -> None:
        """
        A C{wsglue.v1} connection whose hello is not answered yet is not
        reached (nor counted), but the message is in the stream.
        """
        registry, _ = registryWithHistory()
        registry.add(A, V1Connection(answered=False))
        registry.v1Connections += 1
        stream = registry.sessionStream(A, create=True)
        self.assertEqual(registry.send(A, "x"), 0)
        assert stream is not None
        self.assertEqual(stream.position()[1], 1)

    def test_noStreamUntilMade(self) -> None:
        """
        A session whose connections never asked for a stream (plain
        clients only) gets none: nothing is kept for it.
        """
        registry, _ = registryWithHistory()
        registry.add(A, FakeConnection())
        registry.send(A, "x")
        self.assertIsNone(registry.sessionStream(A))
        self.assertIsNone(registry.record(A).state)  # type: ignore[union-attr]

    def test_continuityOff(self) -> None:
        """
        Without a history no stream is made.
        """
        registry = SessionRegistry()
        registry.add(A, FakeConnection())
        self.assertIsNone(registry.sessionStream(A, create=True))
        self.assertIsNone(registry.broadcastStream)


class BroadcastTests(SynchronousTestCase):
    """
    C{broadcast} with continuity on.
    """

    def test_framesBuiltOnce(self) -> None:
        """
        Every plain connection gets the same prepared frame, every
        C{wsglue.v1} connection the same v1 frame.
        """
        registry, _ = registryWithHistory()
        conns = [FakeConnection(), V1Connection(), FakeConnection(), V1Connection()]
        for i, conn in enumerate(conns):
            registry.add(A if i % 2 else B, conn)
        registry.v1Connections = 2
        self.assertEqual(registry.broadcast("news"), 4)
        self.assertIs(conns[0].prepared[0], conns[2].prepared[0])
        self.assertIs(conns[1].continuity.delivered[0], conns[3].continuity.delivered[0])
        self.assertEqual(conns[0].received(), [prepare("news").payloadHybi])
        self.assertEqual(conns[1].continuity.frames(), [{"t": "m", "s": "b", "o": 1, "d": "news"}])

    def test_noV1ConnectionsPlainLoop(self) -> None:
        """
        While no C{wsglue.v1} connection is open, a broadcast is still
        numbered, and plain connections get the plain frame.
        """
        registry, _ = registryWithHistory()
        plain = FakeConnection()
        registry.add(A, plain)
        self.assertEqual(registry.broadcast("x"), 1)
        self.assertEqual(plain.received(), [prepare("x").payloadHybi])
        assert registry.broadcastStream is not None
        self.assertEqual(registry.broadcastStream.position()[1], 1)

    def test_wrongTypeNotNumbered(self) -> None:
        """
        A message that is neither text nor bytes raises C{TypeError} and
        takes no offset.
        """
        registry, _ = registryWithHistory()
        self.assertRaises(TypeError, registry.broadcast, 5)
        assert registry.broadcastStream is not None
        self.assertEqual(registry.broadcastStream.position()[1], 0)

    def test_appendedWithoutConnections(self) -> None:
        """
        A broadcast with no connection is still in the broadcast stream.
        """
        registry, _ = registryWithHistory()
        self.assertEqual(registry.broadcast("a"), 0)
        assert registry.broadcastStream is not None
        self.assertEqual(registry.broadcastStream.position()[1], 1)


class KeptRecordTests(SynchronousTestCase):
    """
    A session's record (its stream, its clients) outlives its last
    connection for the history ttl.
    """

    def test_keptForTtl(self) -> None:
        """
        After the last connection closes the stream is kept; a send to the
        session is appended to it (reaching no one); it is there for a
        connection opened within the ttl.
        """
        registry, clock = registryWithHistory(ttl=10)
        conn = FakeConnection()
        registry.add(A, conn)
        stream = registry.sessionStream(A, create=True)
        registry.remove(A, conn)
        self.assertNotIn(A, registry)
        self.assertEqual(registry.send(A, "while away"), 0)
        clock.advance(9)
        registry.add(A, FakeConnection())
        self.assertIs(registry.sessionStream(A), stream)
        assert stream is not None
        self.assertEqual(stream.since(stream.epoch, 0), [(1, "while away")])

    def test_goneAfterTtl(self) -> None:
        """
        Once the ttl has passed with no connection, the record is gone
        (the timer drops it) and a new stream has a new epoch.
        """
        registry, clock = registryWithHistory(ttl=10)
        conn = FakeConnection()
        registry.add(A, conn)
        old = registry.sessionStream(A, create=True)
        registry.remove(A, conn)
        clock.advance(10)
        self.assertEqual(registry._dormant, {})
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(registry.sessionStream(A))
        registry.add(A, FakeConnection())
        new = registry.sessionStream(A, create=True)
        assert old is not None and new is not None
        self.assertNotEqual(new.epoch, old.epoch)

    def test_idleSessionNotKept(self) -> None:
        """
        A session without state is gone at once, as without continuity.
        """
        registry, clock = registryWithHistory()
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        self.assertEqual(registry._dormant, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopTimers(self) -> None:
        """
        C{stopTimers} cancels the expiry timer, and nothing is kept after.
        """
        registry, clock = registryWithHistory()
        for sid in (A, B):
            conn = FakeConnection()
            registry.add(sid, conn)
            registry.sessionStream(sid, create=True)
            if sid == A:
                registry.remove(sid, conn)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        registry.stopTimers()
        self.assertEqual(clock.getDelayedCalls(), [])
        registry.remove(B, list(registry.connections(B))[0])
        self.assertNotIn(B, registry._dormant)
        self.assertEqual(clock.getDelayedCalls(), [])
