"""
Continuity with C{--redis}: the streams, their epochs and the client ids
live in Redis, so a client resumes on another process or host.  Two
services in this process on one private Redis, and real daemons.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.common import connect, freePort, serve, spawnDaemon, waitFor
from tests.redis_server import startRedis
from tests.test_client import RecordingClient
from tests.test_cluster import HANDLER, ask, startNode


class TwoProcesses(TestCase):
    """
    Two services (two "processes") on one Redis, and clients that move
    from one to the other.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        argv = (
            "--redis",
            self.redis.url,
            "--handler",
            "tests.handlers_for_tests:Recorder",
            "--broadcast-interval",
            "0",
        )
        self.a = serve(self, *argv)
        self.b = serve(self, *argv)
        yield waitFor(lambda: self.a.registry._subscribed and self.b.registry._subscribed, timeout=10)

    @inlineCallbacks
    def started(self, running: Any, sid: str = "") -> Any:
        headers = {"Cookie": "CookieName=" + sid} if sid else None
        c = RecordingClient(running.url, reactor=reactor, headers=headers)
        self.addCleanup(c.stop)
        c.start()
        yield waitFor(lambda: len(c.welcomes) == 1, timeout=10)
        return c

    @inlineCallbacks
    def drop(self, c: RecordingClient, running: Any) -> Any:
        sid = c.sid()
        assert c.connection is not None
        c.connection.transport.abortConnection()
        yield waitFor(lambda: c.connection is None and sid not in running.registry)

    @inlineCallbacks
    def backOn(self, c: RecordingClient, running: Any, welcomes: int = 2) -> Any:
        c.url = running.url
        c.clock.advance(60)
        yield waitFor(lambda: len(c.welcomes) == welcomes, timeout=10)
        return c.welcomes[-1]

    @inlineCallbacks
    def test_resumeOnOtherProcess(self) -> Any:
        """
        A client of process A, dropped while process B sends to its session
        and broadcasts, comes back on B: recovered, replayed exactly the
        missed messages of both streams, then live ones, offsets +1.
        """
        c = yield self.started(self.a)
        self.a.registry.send(c.sid(), "one")
        yield waitFor(lambda: len(c.received) == 1)
        yield self.drop(c, self.a)
        self.b.registry.send(c.sid(), "two")
        self.b.registry.send(c.sid(), "three")
        self.b.registry.broadcast("all")
        # Wait until Redis has numbered them (the sends are asynchronous).
        yield deferLater(reactor, 0.2, lambda: None)
        welcome = yield self.backOn(c, self.b)
        self.assertTrue(welcome["recovered"])
        yield waitFor(lambda: len(c.received) == 4)
        self.a.registry.send(c.sid(), "four")
        yield waitFor(lambda: len(c.received) == 5)
        self.assertEqual(
            c.received,
            [("s", 1, "one"), ("s", 2, "two"), ("s", 3, "three"), ("b", 1, "all"), ("s", 4, "four")],
        )

    @inlineCallbacks
    def test_samePositionsEverywhere(self) -> Any:
        """
        Two tabs of one session on two processes see the same offsets for
        the same messages.
        """
        one = yield self.started(self.a)
        two = yield self.started(self.b, one.sid())
        for i in range(5):
            (self.a if i % 2 else self.b).registry.send(one.sid(), f"m{i}")
        yield waitFor(lambda: len(one.received) == 5 and len(two.received) == 5)
        self.assertEqual(one.received, two.received)
        self.assertEqual([o for _, o, _ in one.received], [1, 2, 3, 4, 5])

    @inlineCallbacks
    def test_concurrentSenders(self) -> Any:
        """
        Both processes send to one session at once, hundreds each: the
        client sees its session stream's offsets go up by exactly one, each
        message once.
        """
        c = yield self.started(self.a)
        sid = c.sid()
        for i in range(300):
            self.a.registry.send(sid, f"a{i}")
            self.b.registry.send(sid, f"b{i}")
        yield waitFor(lambda: len(c.received) == 600, timeout=20)
        self.assertEqual([o for _, o, _ in c.received], list(range(1, 601)))
        texts = [m for _, _, m in c.received]
        self.assertEqual(sorted(texts), sorted([f"a{i}" for i in range(300)] + [f"b{i}" for i in range(300)]))
        self.assertEqual([m for m in texts if m[0] == "a"], [f"a{i}" for i in range(300)])

    @inlineCallbacks
    def test_liveDuringReplayNoGapNoDouble(self) -> Any:
        """
        Messages sent while a client's hello is being answered reach it
        once, after the replay, in offset order.
        """
        c = yield self.started(self.a)
        sid = c.sid()
        yield self.drop(c, self.a)
        for i in range(20):
            self.b.registry.send(sid, f"away{i}")
        yield deferLater(reactor, 0.2, lambda: None)
        c.url = self.b.url
        c.clock.advance(60)
        # Keep sending while it comes back.
        for i in range(50):
            self.a.registry.send(sid, f"live{i}")
            yield deferLater(reactor, 0.002, lambda: None)
        yield waitFor(lambda: len(c.received) == 70, timeout=10)
        self.assertTrue(c.welcomes[-1]["recovered"])
        self.assertEqual([o for _, o, _ in c.received], list(range(1, 71)))

    @inlineCallbacks
    def test_idsNotDoubledAcrossProcesses(self) -> Any:
        """
        A message id that a client sent on process A, resent after a resume
        on process B, is acked again but not handed to B's handler.
        """
        c = yield self.started(self.a)
        c.send("echo first")
        yield waitFor(lambda: c.acks == [1])
        yield self.drop(c, self.a)
        # As if the ack had been lost: the client still holds message 1.
        c.unacked[1] = '{"t":"m","id":1,"d":"echo first"}'
        yield self.backOn(c, self.b)
        yield waitFor(lambda: c.acks == [1, 1])
        handlerA = self.a.factory.handler
        handlerB = self.b.factory.handler
        received = [e for h in (handlerA, handlerB) for e in _events(h) if e[0] == "received"]
        self.assertEqual([e[3] for e in received], ["echo first"])

    @inlineCallbacks
    def test_redisRestartedEmpty(self) -> Any:
        """
        Redis restarted without its keys: the epochs change, a client
        coming back is told C{recovered: false}, with the new positions.
        """
        c = yield self.started(self.a)
        self.a.registry.send(c.sid(), "one")
        yield waitFor(lambda: len(c.received) == 1)
        before = c.welcomes[0]
        yield self.drop(c, self.a)
        yield self.redis.stop()
        yield self.redis.start()
        yield waitFor(lambda: self.a.registry._subscribed and self.b.registry.link.available(), timeout=20)
        welcome = yield self.backOn(c, self.b)
        self.assertFalse(welcome["recovered"])
        self.assertNotEqual(welcome["s"][0], before["s"][0])
        self.assertNotEqual(welcome["b"][0], before["b"][0])

    @inlineCallbacks
    def test_redisDownAtHello(self) -> Any:
        """
        A hello while Redis is unreachable is closed with 1013; the client
        comes back by itself and resumes once Redis answers again.
        """
        c = yield self.started(self.a)
        self.a.registry.send(c.sid(), "one")
        yield waitFor(lambda: len(c.received) == 1)
        yield self.drop(c, self.a)
        yield self.redis.stop()
        yield waitFor(lambda: not self.a.registry.link.available(), timeout=10)
        c.clock.advance(60)
        yield waitFor(lambda: c.lastClose == 1013, timeout=10)
        self.assertEqual(len(c.welcomes), 1)
        yield self.redis.start()
        yield waitFor(lambda: self.a.registry._subscribed and self.a.registry.link.available(), timeout=20)
        for _ in range(100):
            c.clock.advance(60)
            if len(c.welcomes) == 2:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(c.welcomes), 2, (c.lastClose, c.attempts, c.connection))
        # The restarted Redis is empty: a new epoch.
        self.assertFalse(c.welcomes[-1]["recovered"])


class TrimmedAcrossProcesses(TestCase):
    """
    A gap trimmed from Redis (by count or by bytes) is not replayed on
    another process: C{recovered: false}, nothing partial.
    """

    timeout = 60

    @inlineCallbacks
    def resumeAfter(self, messages: List[str], *argv: str) -> Any:
        redis = yield startRedis(self)
        common = ("--redis", redis.url, "--broadcast-interval", "0", *argv)
        a, b = serve(self, *common), serve(self, *common)
        yield waitFor(lambda: a.registry._subscribed and b.registry._subscribed, timeout=10)
        c = yield TwoProcesses.started(self, a)  # type: ignore[arg-type]
        yield TwoProcesses.drop(self, c, a)  # type: ignore[arg-type]
        for m in messages:
            b.registry.send(c.sid(), m)
        # Numbered by the time Redis answers a later command of B's.
        yield b.registry.link.execute("PING")
        welcome = yield TwoProcesses.backOn(self, c, b)  # type: ignore[arg-type]
        return c, welcome

    @inlineCallbacks
    def test_trimmedBySize(self) -> Any:
        """
        More messages missed than C{--history-size} keeps: not recovered.
        """
        c, welcome = yield self.resumeAfter([f"m{i}" for i in range(5)], "--history-size", "3")
        self.assertFalse(welcome["recovered"])
        self.assertEqual(welcome["s"][1], 5)
        self.assertEqual(c.received, [])

    @inlineCallbacks
    def test_trimmedByBytes(self) -> Any:
        """
        More bytes missed than C{--history-bytes} keeps: not recovered.
        """
        c, welcome = yield self.resumeAfter(["0123456789"] * 3, "--history-bytes", "25")
        self.assertFalse(welcome["recovered"])
        self.assertEqual(c.received, [])

    @inlineCallbacks
    def test_olderThanTtl(self) -> Any:
        """
        A gap older than C{--history-ttl} (Redis's clock) is not replayed.
        """
        redis = yield startRedis(self)
        common = ("--redis", redis.url, "--broadcast-interval", "0", "--history-ttl", "0.5")
        a, b = serve(self, *common), serve(self, *common)
        yield waitFor(lambda: a.registry._subscribed and b.registry._subscribed, timeout=10)
        c = yield TwoProcesses.started(self, a)  # type: ignore[arg-type]
        yield TwoProcesses.drop(self, c, a)  # type: ignore[arg-type]
        b.registry.send(c.sid(), "old")
        sent = yield b.registry.link.execute("TIME")

        @inlineCallbacks
        def redisNow() -> Any:
            t = yield b.registry.link.execute("TIME")
            return int(t[0]) + int(t[1]) / 1e6

        start = int(sent[0]) + int(sent[1]) / 1e6
        for _ in range(100):
            if (yield redisNow()) > start + 0.6:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        welcome = yield TwoProcesses.backOn(self, c, b)  # type: ignore[arg-type]
        self.assertFalse(welcome["recovered"])
        self.assertEqual(c.received, [])

    @inlineCallbacks
    def test_withinBounds(self) -> Any:
        """
        As many messages missed as the bounds keep: recovered, all replayed.
        """
        c, welcome = yield self.resumeAfter(["0123456789"] * 2, "--history-size", "2", "--history-bytes", "20")
        self.assertTrue(welcome["recovered"])
        yield waitFor(lambda: len(c.received) == 2)
        self.assertEqual([o for _, o, _ in c.received], [1, 2])


class Presence(TestCase):
    """
    Presence across two processes on one Redis.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        argv = (
            "--redis",
            self.redis.url,
            "--handler",
            "tests.handlers_for_tests:Presence",
            "--broadcast-interval",
            "0",
            "--presence-grace",
            "0.3",
        )
        self.a = serve(self, *argv)
        self.b = serve(self, *argv)
        yield waitFor(lambda: self.a.registry._subscribed and self.b.registry._subscribed, timeout=10)

    def presence(self) -> List[Any]:
        return [e for r in (self.a, self.b) for e in _events(r.factory.handler) if e[0] in ("started", "ended")]

    @inlineCallbacks
    def test_oncePerStartAndEnd(self) -> Any:
        """
        A session with tabs on both processes, one tab reloaded within the
        grace: started once, and ended once after its last tab closed and
        the grace ran out, on one process.
        """
        one = yield TwoProcesses.started(self, self.a)  # type: ignore[arg-type]
        sid = one.sid()
        two = yield TwoProcesses.started(self, self.b, sid)  # type: ignore[arg-type]
        yield waitFor(lambda: len(self.presence()) == 1)
        self.assertEqual(self.presence(), [("started", sid)])
        online = yield self.b.registry.online(sid)
        self.assertTrue(online)
        self.assertEqual((yield self.a.registry.onlineCount()), 1)
        yield one.stop()
        yield two.stop()
        # Back within the grace, on the other process: neither an end nor
        # a start.
        three = yield TwoProcesses.started(self, self.a, sid)  # type: ignore[arg-type]
        yield three.stop()
        yield waitFor(lambda: len(self.presence()) == 2, timeout=10)
        self.assertEqual(self.presence(), [("started", sid), ("ended", sid)])
        self.assertFalse((yield self.a.registry.online(sid)))
        self.assertEqual((yield self.b.registry.onlineCount()), 0)


class DemoBroadcast(TestCase):
    """
    The demo broadcast with two processes on one Redis.
    """

    timeout = 60

    @inlineCallbacks
    def test_oncePerIntervalForTheCluster(self) -> Any:
        """
        Two processes with the demo broadcast on: one sends it for the
        cluster, so clients on either process get the same broadcasts, with
        offsets +1, at the pace of one per interval.
        """
        self.redis = yield startRedis(self)
        common = ("--redis", self.redis.url, "--broadcast-interval", "0.2")
        a = serve(self, *common, "--broadcast-message", "from-A")
        b = serve(self, *common, "--broadcast-message", "from-B")
        yield waitFor(lambda: a.registry._subscribed and b.registry._subscribed, timeout=10)
        onA = yield TwoProcesses.started(self, a)  # type: ignore[arg-type]
        onB = yield TwoProcesses.started(self, b)  # type: ignore[arg-type]
        start = reactor.seconds()
        yield waitFor(lambda: len(onA.received) >= 8 and len(onB.received) >= 8, timeout=20)
        elapsed = reactor.seconds() - start
        # Twice as many (both processes sending) would take half as long.
        self.assertGreater(elapsed, 6 * 0.2)
        for c in (onA, onB):
            offsets = [o for _, o, _ in c.received]
            self.assertEqual(offsets, list(range(offsets[0], offsets[0] + len(offsets))))
        self.assertEqual(len({m for _, _, m in onA.received[:8]}), 1)


class Daemons(TestCase):
    """
    Real daemons on one Redis: a client resumes on another host, and on
    another worker of C{--workers 2}.
    """

    timeout = 120

    @inlineCallbacks
    def client(self, port: int) -> Any:
        c = RecordingClient(f"ws://127.0.0.1:{port}/", reactor=reactor)
        self.addCleanup(c.stop)
        c.start()
        yield waitFor(lambda: len(c.welcomes) == 1, timeout=10)
        return c

    @inlineCallbacks
    def dropAndBack(self, c: RecordingClient, whileAway: Any, port: int = 0) -> Any:
        """
        Drop C{c}, call C{whileAway()} (it may return a Deferred), and let
        it reconnect (to C{port} if given); fire with its new welcome.
        """
        assert c.connection is not None
        welcomes = len(c.welcomes)
        c.connection.transport.abortConnection()
        yield waitFor(lambda: c.connection is None)
        yield whileAway()
        if port:
            c.url = f"ws://127.0.0.1:{port}/"
        for _ in range(200):
            c.clock.advance(60)
            if len(c.welcomes) > welcomes:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(c.welcomes), welcomes + 1)
        return c.welcomes[-1]

    @inlineCallbacks
    def test_resumeOnOtherHost(self) -> Any:
        """
        Two daemons (two hosts) on one Redis: a client of host A, dropped
        while host B sends to its session, comes back on B: recovered,
        replayed exactly what it missed, then live messages.
        """
        redis = yield startRedis(self)
        a, b = yield defer.gatherResults([startNode(self, redis), startNode(self, redis)])
        c = yield self.client(a.port)
        sid = c.sid()
        sender = yield connect(self, b.port)
        self.assertEqual((yield ask(sender, f"send {sid} one")), "sent 0")
        yield waitFor(lambda: len(c.received) == 1)

        @inlineCallbacks
        def away() -> Any:
            yield ask(sender, f"send {sid} two")
            yield ask(sender, f"send {sid} three")

        welcome = yield self.dropAndBack(c, away, b.port)
        self.assertTrue(welcome["recovered"])
        yield ask(sender, f"send {sid} four")
        yield waitFor(lambda: len(c.received) == 4)
        self.assertEqual([(o, m) for _, o, m in c.received], [(1, "one"), (2, "two"), (3, "three"), (4, "four")])

    @inlineCallbacks
    def test_resumeOnOtherWorker(self) -> Any:
        """
        C{twistd wsglue --workers 2 --redis}: a client that reconnects until
        another worker takes it resumes every time, with nothing lost and
        nothing twice.
        """
        redis = yield startRedis(self)
        port = freePort()
        daemon = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--redis",
                redis.url,
                "--handler",
                HANDLER,
                "--broadcast-interval",
                "0",
                "--workers",
                "2",
            ],
        )
        yield waitFor(lambda: daemon.output.count("subscribed at") == 2, timeout=30)
        c = yield self.client(port)
        sid = c.sid()
        sender = yield connect(self, port)
        pids = set()
        sent = 0
        for i in range(40):
            c.send("pid")
            yield waitFor(lambda: len(c.replies) == i + 1)
            pids.add(c.replies[-1])
            if len(pids) == 2:
                break
            yield ask(sender, f"send {sid} here{i}")
            sent += 1
            yield waitFor(lambda: len(c.received) == sent)

            @inlineCallbacks
            def away() -> Any:
                yield ask(sender, f"send {sid} away{i}")

            sent += 1
            welcome = yield self.dropAndBack(c, away)
            self.assertTrue(welcome["recovered"])
            yield waitFor(lambda: len(c.received) == sent)
        self.assertEqual(len(pids), 2, "the same worker took every connection")
        self.assertEqual([o for _, o, _ in c.received], list(range(1, sent + 1)))


def _events(handler: Any) -> List[Any]:
    inner = getattr(handler, "handler", handler)
    return list(getattr(inner, "events", []))
