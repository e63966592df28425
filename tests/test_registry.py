"""
Tests for L{wsglue.registry.SessionRegistry}, in memory, with plain objects
standing in for connections (SPEC section 7).
"""

from __future__ import annotations

from typing import Any, List, Tuple

from autobahn.websocket.protocol import PreparedMessage
from twisted.trial.unittest import SynchronousTestCase

from wsglue import registry as registryModule
from wsglue.registry import SessionRecord, SessionRegistry, prepare

A = "a" * 40
B = "b" * 40


class FakeConnection:
    """
    A connection that records what reached it, and can be closed (after
    which it takes nothing, as an open=False protocol does).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.open = True
        self.sent: List[Any] = []
        self.prepared: List[PreparedMessage] = []
        self.closes: List[Tuple[int, str]] = []

    def send(self, message: Any) -> bool:
        if not self.open:
            return False
        self.sent.append(message)
        return True

    def sendPrepared(self, prepared: PreparedMessage) -> bool:
        if not self.open:
            return False
        self.prepared.append(prepared)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.append((code, reason))

    def received(self) -> List[bytes]:
        """
        Every frame that reached this connection, as the bytes on the wire.
        """
        frames = [prepare(m).payloadHybi for m in self.sent]
        frames += [p.payloadHybi for p in self.prepared]
        return frames


class MembershipTests(SynchronousTestCase):
    """
    Adding and removing connections.
    """

    def setUp(self) -> None:
        self.registry = SessionRegistry()

    def test_emptyRegistry(self) -> None:
        """
        A new registry holds no session and no connection.
        """
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(self.registry.sessions(), [])
        self.assertEqual(self.registry.connectionCount, 0)
        self.assertNotIn(A, self.registry)

    def test_severalConnectionsPerSession(self) -> None:
        """
        A session holds several connections at once; it counts once in
        C{len} and C{sessions()}.
        """
        one, two = FakeConnection(), FakeConnection()
        self.assertTrue(self.registry.add(A, one))
        self.assertFalse(self.registry.add(A, two))
        self.assertEqual(self.registry.connections(A), [one, two])
        self.assertEqual(len(self.registry), 1)
        self.assertEqual(self.registry.sessions(), [A])
        self.assertEqual(self.registry.connectionCount, 2)
        self.assertIn(A, self.registry)

    def test_addTwiceCountsOnce(self) -> None:
        """
        Adding the same connection twice registers it once.
        """
        one = FakeConnection()
        self.registry.add(A, one)
        self.registry.add(A, one)
        self.assertEqual(self.registry.connections(A), [one])
        self.assertEqual(self.registry.connectionCount, 1)

    def test_closingOneLeavesTheOther(self) -> None:
        """
        Removing one connection of a session leaves its other connections
        registered, and the session present.
        """
        one, two = FakeConnection(), FakeConnection()
        self.registry.add(A, one)
        self.registry.add(A, two)
        self.assertFalse(self.registry.remove(A, one))
        self.assertIn(A, self.registry)
        self.assertEqual(self.registry.connections(A), [two])

    def test_removalOnLastClose(self) -> None:
        """
        A session whose last connection is removed is gone at once.
        """
        one, two = FakeConnection(), FakeConnection()
        self.registry.add(A, one)
        self.registry.add(A, two)
        self.registry.remove(A, one)
        self.assertTrue(self.registry.remove(A, two))
        self.assertNotIn(A, self.registry)
        self.assertEqual(self.registry.sessions(), [])
        self.assertEqual(self.registry.connections(A), [])
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(self.registry.connectionCount, 0)

    def test_removeUnknown(self) -> None:
        """
        Removing a connection that is not registered changes nothing.
        """
        one = FakeConnection()
        self.registry.add(A, one)
        self.assertFalse(self.registry.remove(A, FakeConnection()))
        self.assertFalse(self.registry.remove(B, one))
        self.assertEqual(self.registry.connections(A), [one])
        self.assertEqual(self.registry.connectionCount, 1)

    def test_sessionsAreSeparate(self) -> None:
        """
        Connections of different sessions are listed under their own session.
        """
        one, two = FakeConnection(), FakeConnection()
        self.registry.add(A, one)
        self.registry.add(B, two)
        self.assertEqual(sorted(self.registry.sessions()), [A, B])
        self.assertEqual(self.registry.connections(B), [two])
        self.assertEqual(sorted(self.registry), [A, B])

    def test_connectionsIsACopy(self) -> None:
        """
        The list from C{connections} is a copy: changing it does not change
        the registry.
        """
        one = FakeConnection()
        self.registry.add(A, one)
        self.registry.connections(A).clear()
        self.assertEqual(self.registry.connections(A), [one])


class RecordTests(SynchronousTestCase):
    """
    The L{SessionRecord}: one per session while it has a connection here.
    """

    def test_oneRecordForTabs(self) -> None:
        """
        Two tabs of a session share one record, which lists both in the
        order they opened; it is gone, and a new one made, once the last
        closes and the session comes back.
        """
        registry = SessionRegistry()
        a, b = FakeConnection(), FakeConnection()
        self.assertIsNone(registry.record("s1"))
        registry.add("s1", a)
        record = registry.record("s1")
        assert record is not None
        self.assertIsInstance(record, SessionRecord)
        self.assertEqual(record.sid, "s1")
        self.assertIsNone(record.state)
        registry.add("s1", b)
        self.assertIs(registry.record("s1"), record)
        self.assertEqual(list(record), [a, b])
        registry.remove("s1", a)
        self.assertIs(registry.record("s1"), record)
        registry.remove("s1", b)
        self.assertIsNone(registry.record("s1"))
        registry.add("s1", a)
        self.assertIsNot(registry.record("s1"), record)

    def test_recordIsSmall(self) -> None:
        """
        A record adds no instance dictionary to the connections' mapping.
        """
        self.assertFalse(hasattr(SessionRecord("s"), "__dict__"))


class SendTests(SynchronousTestCase):
    """
    C{send}, C{broadcast} and C{close}.
    """

    def test_onlyStrOrBytes(self) -> None:
        """
        A message that is neither C{str} nor C{bytes} is refused with
        L{TypeError} before anything is sent (C{bytes(5)} would otherwise
        send five NUL bytes).
        """
        registry = SessionRegistry()
        conn = FakeConnection()
        registry.add(A, conn)
        self.assertRaises(TypeError, registry.send, A, 5)
        self.assertRaises(TypeError, registry.broadcast, 5)
        self.assertEqual(conn.received(), [])

    def setUp(self) -> None:
        self.registry = SessionRegistry()
        self.a1, self.a2, self.b1 = FakeConnection("a1"), FakeConnection("a2"), FakeConnection("b1")
        self.registry.add(A, self.a1)
        self.registry.add(A, self.a2)
        self.registry.add(B, self.b1)

    def test_sendReachesEveryConnectionOfTheSession(self) -> None:
        """
        C{send} reaches every connection of the session, and only those, and
        returns how many it reached.
        """
        self.assertEqual(self.registry.send(A, "hi"), 2)
        self.assertEqual(self.a1.received(), [b"\x81\x02hi"])
        self.assertEqual(self.a2.received(), [b"\x81\x02hi"])
        self.assertEqual(self.b1.received(), [])

    def test_sendToSingleConnection(self) -> None:
        """
        C{send} to a session of one connection reaches it and returns 1.
        """
        self.assertEqual(self.registry.send(B, "hi"), 1)
        self.assertEqual(self.b1.received(), [b"\x81\x02hi"])

    def test_sendUnknownSession(self) -> None:
        """
        C{send} to an unknown session returns 0 and raises nothing.
        """
        self.assertEqual(self.registry.send("c" * 40, "hi"), 0)
        self.assertEqual(self.registry.send("", b"hi"), 0)

    def test_sendAfterLastClose(self) -> None:
        """
        C{send} to a session whose connections are all gone returns 0.
        """
        self.registry.remove(B, self.b1)
        self.assertEqual(self.registry.send(B, "hi"), 0)
        self.assertEqual(self.b1.received(), [])

    def test_sendCountsOnlyOpenConnections(self) -> None:
        """
        A connection that no longer takes messages is not counted as reached.
        """
        self.a1.open = False
        self.assertEqual(self.registry.send(A, "hi"), 1)
        self.assertEqual(self.registry.broadcast("hi"), 2)

    def test_textFrame(self) -> None:
        """
        A C{str} goes as a text frame, UTF-8 encoded (single connection and
        several connections alike).
        """
        self.registry.send(B, "h\xe9")
        self.registry.send(A, "h\xe9")
        self.assertEqual(self.b1.received(), [b"\x81\x03h\xc3\xa9"])
        self.assertEqual(self.a1.received(), [b"\x81\x03h\xc3\xa9"])

    def test_binaryFrame(self) -> None:
        """
        A C{bytes} goes as a binary frame (single connection and several
        connections alike).
        """
        self.registry.send(B, b"\x00\xff")
        self.registry.send(A, b"\x00\xff")
        self.assertEqual(self.b1.received(), [b"\x82\x02\x00\xff"])
        self.assertEqual(self.a1.received(), [b"\x82\x02\x00\xff"])

    def test_preparedFramesAreUnmasked(self) -> None:
        """
        Server frames are never masked (RFC 6455 section 5.1), also when long.
        """
        frame = prepare("x" * 300).payloadHybi
        self.assertEqual(frame[:4], b"\x81\x7e\x01\x2c")
        self.assertEqual(frame[4:], b"x" * 300)

    def test_broadcastReachesEveryone(self) -> None:
        """
        C{broadcast} reaches every connection of every session and returns
        how many.
        """
        self.assertEqual(self.registry.broadcast("notify"), 3)
        for conn in (self.a1, self.a2, self.b1):
            self.assertEqual(conn.received(), [b"\x81\x06notify"], conn.name)

    def test_broadcastEmpty(self) -> None:
        """
        C{broadcast} on an empty registry returns 0.
        """
        self.assertEqual(SessionRegistry().broadcast("notify"), 0)

    def test_broadcastBuildsTheFrameOnce(self) -> None:
        """
        C{broadcast} builds one L{PreparedMessage} and hands that same object
        to every connection.
        """
        built: List[PreparedMessage] = []

        class Counting(PreparedMessage):
            def __init__(self, *args: Any) -> None:
                PreparedMessage.__init__(self, *args)
                built.append(self)

        self.patch(registryModule, "PreparedMessage", Counting)
        self.registry.broadcast("notify")
        self.assertEqual(len(built), 1)
        for conn in (self.a1, self.a2, self.b1):
            self.assertEqual(len(conn.prepared), 1)
            self.assertIs(conn.prepared[0], built[0])

    def test_broadcastAfterOneCloses(self) -> None:
        """
        After one connection of a session is removed, C{broadcast} still
        reaches the other.
        """
        self.registry.remove(A, self.a1)
        self.assertEqual(self.registry.broadcast("notify"), 2)
        self.assertEqual(self.a1.received(), [])
        self.assertEqual(self.a2.received(), [b"\x81\x06notify"])

    def test_closeSession(self) -> None:
        """
        C{close(sid, code, reason)} closes every connection of that session
        and no other, and returns how many it asked to close.
        """
        self.assertEqual(self.registry.close(A, 4000, "bye"), 2)
        self.assertEqual(self.a1.closes, [(4000, "bye")])
        self.assertEqual(self.a2.closes, [(4000, "bye")])
        self.assertEqual(self.b1.closes, [])

    def test_closeDefaultCode(self) -> None:
        """
        C{close(sid)} closes with 1000 and no reason.
        """
        self.registry.close(B)
        self.assertEqual(self.b1.closes, [(1000, "")])

    def test_closeUnknownSession(self) -> None:
        """
        C{close} of an unknown session returns 0 and raises nothing.
        """
        self.assertEqual(self.registry.close("c" * 40), 0)

    def test_closeAll(self) -> None:
        """
        C{closeAll} closes every connection of every session.
        """
        self.assertEqual(self.registry.closeAll(1001, "going away"), 3)
        for conn in (self.a1, self.a2, self.b1):
            self.assertEqual(conn.closes, [(1001, "going away")])

    def test_closeWhileConnectionsLeave(self) -> None:
        """
        A connection that unregisters itself while being closed (as a
        protocol may, synchronously) does not break C{close}.
        """
        registry = self.registry

        class Leaving(FakeConnection):
            def close(self, code: int = 1000, reason: str = "") -> None:
                FakeConnection.close(self, code, reason)
                registry.remove(A, self)

        leaving = Leaving()
        registry.add(A, leaving)
        self.assertEqual(registry.close(A), 3)
        self.assertEqual(leaving.closes, [(1000, "")])
        self.assertEqual(self.a2.closes, [(1000, "")])
