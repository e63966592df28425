"""
L{wsglue.client.GlueClient} against a wsglue service over real loopback
sockets, in one process: the recovery table (what a client coming back
is replayed, or told to resynchronise), resent messages not doubled, and
the reconnect policy.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import RunningService, freePort, serve, spawnDaemon, waitFor
from wsglue.client import GlueClient, backoff


class RecordingClient(GlueClient):
    """
    A L{GlueClient} that keeps what it sees, and lets a test wait for it.
    """

    def __init__(self, url: str, **kw: Any) -> None:
        self.clock = Clock()
        GlueClient.__init__(self, url, clock=self.clock, rand=lambda: 0.0, **kw)
        self.received: List[Tuple[str, int, Any]] = []
        self.replies: List[Any] = []
        self.welcomes: List[Dict[str, Any]] = []
        self.acks: List[int] = []
        self.gaveUpWith: Optional[int] = None

    def messageReceived(self, stream: str, offset: int, message: Any) -> None:
        self.received.append((stream, offset, message))

    def replyReceived(self, message: Any) -> None:
        self.replies.append(message)

    def acked(self, messageId: int) -> None:
        self.acks.append(messageId)

    def welcome(self, welcome: Dict[str, Any]) -> None:
        self.welcomes.append(welcome)

    def gaveUp(self, code: Optional[int]) -> None:
        self.gaveUpWith = code

    def sid(self) -> str:
        assert self.cookie is not None
        return self.cookie.split("=", 1)[1].split(".")[0]


class RecoveryBase(TestCase):
    """
    A service, and clients connected, dropped while things happen, and
    back.
    """

    argv: Tuple[str, ...] = ("--handler", "tests.handlers_for_tests:Recorder")

    def setUp(self) -> None:
        self.running = serve(self, *self.argv)
        self.registry = self.running.registry

    @inlineCallbacks
    def started(self, headers: Optional[Dict[str, str]] = None) -> Any:
        c = RecordingClient(self.running.url, reactor=reactor, headers=headers)
        self.addCleanup(c.stop)
        c.start()
        yield waitFor(lambda: len(c.welcomes) == 1)
        return c

    @inlineCallbacks
    def drop(self, c: RecordingClient) -> Any:
        """
        Lose the client's connection (as a network failure would), and wait
        until the server has seen it go; the client's reconnect waits on
        its clock.
        """
        sid = c.sid()
        assert c.connection is not None
        c.connection.transport.abortConnection()
        yield waitFor(lambda: c.connection is None and sid not in self.registry)

    @inlineCallbacks
    def back(self, c: RecordingClient, welcomes: int = 2) -> Any:
        """
        Let the client reconnect; fire with its new welcome.
        """
        c.clock.advance(60)
        yield waitFor(lambda: len(c.welcomes) == welcomes)
        return c.welcomes[-1]


class Recovery(RecoveryBase):
    """
    A client connected, dropped, things happening while it is away, and
    its return.
    """

    @inlineCallbacks
    def test_freshClient(self) -> Any:
        """
        A fresh client is welcomed C{recovered: false}, with positions.
        """
        c = yield self.started()
        self.assertFalse(c.welcomes[0]["recovered"])
        self.assertEqual(c.positions["s"][1], 0)  # type: ignore[index]

    @inlineCallbacks
    def test_samePosition(self) -> Any:
        """
        Nothing sent while away: recovered, nothing replayed.
        """
        c = yield self.started()
        self.registry.send(c.sid(), "seen")
        yield waitFor(lambda: len(c.received) == 1)
        yield self.drop(c)
        welcome = yield self.back(c)
        self.assertTrue(welcome["recovered"])
        self.registry.send(c.sid(), "after")
        yield waitFor(lambda: len(c.received) == 2)
        self.assertEqual(c.received, [("s", 1, "seen"), ("s", 2, "after")])

    @inlineCallbacks
    def test_gapInsideWindow(self) -> Any:
        """
        What was sent to the session and broadcast while away is replayed,
        exactly, then live messages follow: each stream +1, none lost or
        doubled.
        """
        c = yield self.started()
        sid = c.sid()
        self.registry.send(sid, "s1")
        self.registry.broadcast("b1")
        yield waitFor(lambda: len(c.received) == 2)
        yield self.drop(c)
        self.registry.send(sid, "s2")
        self.registry.broadcast("b2")
        self.registry.send(sid, b"\x00s3")
        welcome = yield self.back(c)
        self.assertTrue(welcome["recovered"])
        self.registry.broadcast("b3")
        yield waitFor(lambda: len(c.received) == 6)
        self.assertEqual(
            c.received,
            [("s", 1, "s1"), ("b", 1, "b1"), ("s", 2, "s2"), ("s", 3, b"\x00s3"), ("b", 2, "b2"), ("b", 3, "b3")],
        )

    @inlineCallbacks
    def test_unknownEpoch(self) -> Any:
        """
        A position in an epoch the server does not know (another session's,
        or made up): not recovered, nothing replayed.
        """
        c = yield self.started()
        other = yield self.started()
        yield self.drop(c)
        self.registry.send(c.sid(), "missed")
        c.positions["s"] = other.positions["s"]
        welcome = yield self.back(c)
        self.assertFalse(welcome["recovered"])
        self.registry.send(c.sid(), "live")
        yield waitFor(lambda: len(c.received) == 1)
        self.assertEqual(c.received, [("s", 2, "live")])

    @inlineCallbacks
    def test_resentNotDoubled(self) -> Any:
        """
        A message the handler took but whose ack was lost (the connection
        closed first) is sent again after the reconnect, acked, and not
        handed to the handler again.
        """
        c = yield self.started()
        c.send("echo one")
        yield waitFor(lambda: c.acks == [1])
        c.send("close")  # the handler closes the connection: no ack
        yield waitFor(lambda: c.connection is None)
        self.assertEqual(list(c.unacked), [2])
        yield self.back(c)
        yield waitFor(lambda: c.acks == [1, 2])
        recorder = self.running.factory.handler.handler
        taken = [e[3] for e in recorder.events if e[0] == "received"]
        self.assertEqual(taken, ["echo one", "close"])
        self.assertEqual(c.replies, ["echo: one"])

    @inlineCallbacks
    def test_sentWhileAway(self) -> Any:
        """
        A message sent while disconnected goes once the session is back.
        """
        c = yield self.started()
        yield self.drop(c)
        c.send("echo later")
        yield self.back(c)
        yield waitFor(lambda: c.acks == [1])
        self.assertEqual(c.replies, ["echo: later"])

    @inlineCallbacks
    def test_notAfter1008(self) -> Any:
        """
        Closed with 1008 (a policy): the client does not come back.
        """
        c = yield self.started()
        self.registry.close(c.sid(), 1008, "no")
        yield waitFor(lambda: c.gaveUpWith == 1008)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_soonAfter1001(self) -> Any:
        """
        Closed with 1001 (going away): the client comes back within half
        the shortest delay.
        """
        c = yield self.started()
        self.registry.close(c.sid(), 1001)
        yield waitFor(lambda: c.connection is None)
        (call,) = c.clock.getDelayedCalls()
        self.assertLessEqual(call.getTime(), 0.5)
        welcome = yield self.back(c)
        self.assertTrue(welcome["recovered"])


class TrimmedBySize(RecoveryBase):
    argv = RecoveryBase.argv + ("--history-size", "2")

    @inlineCallbacks
    def test_trimmedBySize(self) -> Any:
        """
        More messages while away than the history keeps: not recovered,
        nothing replayed; live messages go on from the current position.
        """
        c = yield self.started()
        yield self.drop(c)
        for i in range(3):
            self.registry.send(c.sid(), f"m{i}")
        welcome = yield self.back(c)
        self.assertFalse(welcome["recovered"])
        self.assertEqual(welcome["s"][1], 3)
        self.registry.send(c.sid(), "live")
        yield waitFor(lambda: len(c.received) == 1)
        self.assertEqual(c.received, [("s", 4, "live")])


class TrimmedByBytes(RecoveryBase):
    argv = RecoveryBase.argv + ("--history-bytes", "10")

    @inlineCallbacks
    def test_trimmedByBytes(self) -> Any:
        """
        More bytes while away than the history keeps: not recovered.
        """
        c = yield self.started()
        yield self.drop(c)
        self.registry.send(c.sid(), "123456")
        self.registry.send(c.sid(), "789012")
        welcome = yield self.back(c)
        self.assertFalse(welcome["recovered"])
        self.assertEqual(c.received, [])


class OlderThanTtl(RecoveryBase):
    argv = RecoveryBase.argv + ("--history-ttl", "30")

    @inlineCallbacks
    def test_olderThanTtl(self) -> Any:
        """
        A message of the gap added more than the ttl ago: not recovered
        (the session stayed open in another tab, so its stream is the same).
        """
        clock = Clock()
        assert self.registry.history is not None
        self.registry.history.clock = clock
        self.registry.clock = clock
        c = yield self.started()
        assert c.cookie is not None
        yield self.started({"Cookie": c.cookie})
        self.assertEqual(len(self.registry.connections(c.sid())), 2)
        assert c.connection is not None
        c.connection.transport.abortConnection()
        yield waitFor(lambda: len(self.registry.connections(c.sid())) == 1)
        self.registry.send(c.sid(), "old")
        clock.advance(30)
        welcome = yield self.back(c)
        self.assertFalse(welcome["recovered"])

    @inlineCallbacks
    def test_sessionGoneAfterTtl(self) -> Any:
        """
        Away longer than the ttl with no other tab: the session's stream is
        gone, a new one has a new epoch: not recovered.
        """
        clock = Clock()
        assert self.registry.history is not None
        self.registry.history.clock = clock
        self.registry.clock = clock
        c = yield self.started()
        old = c.positions["s"]
        yield self.drop(c)
        clock.advance(30)
        welcome = yield self.back(c)
        self.assertFalse(welcome["recovered"])
        self.assertNotEqual(welcome["s"][0], old[0])  # type: ignore[index]


class Restarted(TestCase):
    """
    The daemon restarted (without Redis): every epoch changes.
    """

    @inlineCallbacks
    def test_restarted(self) -> Any:
        """
        A client of the previous process comes back to the new one on the
        same port: recovered false, new epochs, and it goes on.
        """
        port = freePort()
        argv = ("--port", f"tcp:{port}:interface=127.0.0.1")
        first = RunningService(*argv)
        c = RecordingClient(first.url, reactor=reactor)
        self.addCleanup(c.stop)
        c.start()
        yield waitFor(lambda: len(c.welcomes) == 1)
        old = dict(c.positions)
        yield first.stop()
        yield waitFor(lambda: c.connection is None)
        second = RunningService(*argv)
        self.addCleanup(second.stop)
        c.clock.advance(60)
        yield waitFor(lambda: len(c.welcomes) == 2)
        welcome = c.welcomes[1]
        self.assertFalse(welcome["recovered"])
        self.assertNotEqual(welcome["s"][0], old["s"][0])  # type: ignore[index]
        self.assertNotEqual(welcome["b"][0], old["b"][0])  # type: ignore[index]
        self.assertIn(c.sid(), second.registry)


class BackoffTests(SynchronousTestCase):
    """
    The reconnect delays.
    """

    def test_fullJitter(self) -> None:
        """
        The delay is a uniform draw under a ceiling that doubles from 0.5 s
        up to 20 s.
        """
        self.assertEqual([backoff(n, lambda: 1.0) for n in range(8)], [0.5, 1, 2, 4, 8, 16, 20, 20])
        self.assertEqual(backoff(3, lambda: 0.5), 2.0)
        self.assertEqual(backoff(100, lambda: 1.0), 20.0)

    def test_floor(self) -> None:
        """
        Never under a tenth of the shortest delay.
        """
        self.assertEqual(backoff(0, lambda: 0.0), 0.05)


class DaemonRestarted(TestCase):
    """
    A real C{twistd wsglue} restarted under a client.
    """

    @inlineCallbacks
    def test_daemonRestarted(self) -> Any:
        """
        The daemon stops (1001: the client comes back soon) and starts
        again on the same port: the client resumes, is told
        C{recovered: false} with new epochs, and its messages still reach
        the handler.
        """
        port = freePort()
        args = ["--port", f"tcp:{port}:interface=127.0.0.1", "--broadcast-interval", "0"]
        first = spawnDaemon(self, args)
        yield first.waitForOutput(f"started websocket server at ws://127.0.0.1:{port}")
        c = RecordingClient(f"ws://127.0.0.1:{port}/", reactor=reactor)
        self.addCleanup(c.stop)
        c.start()
        yield waitFor(lambda: len(c.welcomes) == 1, timeout=10)
        c.send("ping")
        yield waitFor(lambda: c.replies == ["pong"])
        old = dict(c.positions)
        first.signal("TERM")
        self.assertEqual((yield first.ended), 0, first.output)
        yield waitFor(lambda: c.lastClose == 1001)
        second = spawnDaemon(self, args)
        yield second.waitForOutput(f"started websocket server at ws://127.0.0.1:{port}")
        c.clock.advance(60)
        yield waitFor(lambda: len(c.welcomes) == 2, timeout=10)
        welcome = c.welcomes[1]
        self.assertFalse(welcome["recovered"])
        self.assertNotEqual(welcome["s"][0], old["s"][0])  # type: ignore[index]
        self.assertNotEqual(welcome["b"][0], old["b"][0])  # type: ignore[index]
        c.send("ping")
        yield waitFor(lambda: c.replies == ["pong", "pong"])
