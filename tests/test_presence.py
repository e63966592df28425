"""
Presence in one process: a handler's C{sessionStarted} and
C{sessionEnded} (after C{--presence-grace} without a connection), and
C{registry.online} / C{registry.onlineCount}.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, serve, waitFor
from tests.test_registry import A, B, FakeConnection
from wsglue.handlers import HandlerAdapter
from wsglue.registry import SessionRegistry


class Watcher:
    """
    A handler that records presence events.
    """

    def __init__(self, registry: Any = None) -> None:
        self.events: List[Tuple[str, str]] = []

    def sessionStarted(self, sid: str) -> None:
        self.events.append(("started", sid))

    def sessionEnded(self, sid: str) -> None:
        self.events.append(("ended", sid))


def watched(grace: float = 30) -> Tuple[SessionRegistry, Clock, Watcher]:
    clock = Clock()
    registry = SessionRegistry()
    registry.configure(None, presenceGrace=grace, clock=clock)
    watcher = Watcher()
    registry.watchPresence(watcher.sessionStarted, watcher.sessionEnded)
    return registry, clock, watcher


class PresenceTests(SynchronousTestCase):
    """
    The registry's presence, on a clock.
    """

    def test_startedOnce(self) -> None:
        """
        The first connection of a session starts it; a second tab does not.
        """
        registry, _, watcher = watched()
        registry.add(A, FakeConnection())
        registry.add(A, FakeConnection())
        self.assertEqual(watcher.events, [("started", A)])

    def test_endedAfterGrace(self) -> None:
        """
        A session ends once it has had no connection for the grace.
        """
        registry, clock, watcher = watched(30)
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        clock.advance(29)
        self.assertEqual(watcher.events, [("started", A)])
        self.assertTrue(registry.online(A))
        self.assertEqual(registry.onlineCount(), 1)
        clock.advance(1)
        self.assertEqual(watcher.events, [("started", A), ("ended", A)])
        self.assertFalse(registry.online(A))
        self.assertEqual(registry.onlineCount(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reloadIsNotDeparture(self) -> None:
        """
        A connection again within the grace: neither an end nor a start.
        """
        registry, clock, watcher = watched(30)
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        clock.advance(10)
        registry.add(A, FakeConnection())
        clock.advance(100)
        self.assertEqual(watcher.events, [("started", A)])

    def test_startedAgainAfterEnd(self) -> None:
        """
        After its end a session that comes back starts again.
        """
        registry, clock, watcher = watched(5)
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        clock.advance(5)
        registry.add(A, FakeConnection())
        self.assertEqual(watcher.events, [("started", A), ("ended", A), ("started", A)])

    def test_eachInTurn(self) -> None:
        """
        Sessions end in the order their grace runs out.
        """
        registry, clock, watcher = watched(10)
        a, b = FakeConnection(), FakeConnection()
        registry.add(A, a)
        registry.add(B, b)
        registry.remove(A, a)
        clock.advance(4)
        registry.remove(B, b)
        clock.advance(6)
        self.assertEqual(watcher.events[-1], ("ended", A))
        clock.advance(4)
        self.assertEqual(watcher.events[-1], ("ended", B))

    def test_zeroGrace(self) -> None:
        """
        With no grace, a session ends as its last connection closes.
        """
        registry, clock, watcher = watched(0)
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        self.assertEqual(watcher.events, [("started", A), ("ended", A)])
        self.assertFalse(registry.online(A))

    def test_withoutWatcherNoTimers(self) -> None:
        """
        Without a handler to tell, no timer runs; online() still reads the
        grace.
        """
        clock = Clock()
        registry = SessionRegistry()
        registry.configure(None, presenceGrace=10, clock=clock)
        conn = FakeConnection()
        registry.add(A, conn)
        registry.remove(A, conn)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(registry.online(A))
        clock.advance(10)
        self.assertFalse(registry.online(A))
        self.assertEqual(registry.onlineCount(), 0)

    def test_handlerErrorsContained(self) -> None:
        """
        A handler's presence method that raises is logged; the registry
        goes on.
        """

        class Broken:
            def sessionStarted(self, sid: str) -> None:
                raise RuntimeError("no")

        adapter = HandlerAdapter(Broken())
        self.assertTrue(adapter.wantsPresence)
        registry, _, _ = watched()
        registry.watchPresence(adapter.sessionStarted, adapter.sessionEnded)
        registry.add(A, FakeConnection())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(A, registry)
        self.assertFalse(HandlerAdapter(object()).wantsPresence)


class PresenceOverSocketsTests(TestCase):
    """
    A handler's presence methods, through a real service.
    """

    @inlineCallbacks
    def test_startedAndEnded(self) -> Any:
        """
        C{sessionStarted} when the browser connects, C{sessionEnded} after
        the grace once it left.
        """
        running = serve(self, "--handler", "tests.test_presence:Watcher", "--presence-grace", "30")
        clock = Clock()
        running.registry.clock = clock
        watcher = running.factory.handler.handler
        c = yield connect(self, running.port)
        yield waitFor(lambda: len(watcher.events) == 1)
        sid = watcher.events[0][1]
        c.sendClose(1000)
        yield c.closed
        yield waitFor(lambda: sid not in running.registry)
        self.assertTrue(running.registry.online(sid))
        clock.advance(30)
        self.assertEqual(watcher.events, [("started", sid), ("ended", sid)])
        self.assertEqual(running.registry.onlineCount(), 0)
