"""
Presence (SPEC section 13) when a process of the cluster dies: a real
C{twistd wsglue --workers 2 --redis} on a private Redis, real WebSocket
clients, workers killed with SIGKILL.  The handler
(L{tests.cluster_record_handler}) appends every C{sessionStarted} and
C{sessionEnded} to a file, so that the calls of a dead worker count too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from typing import Any, List, Optional

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.cluster_record_handler import readRecord
from tests.common import connect, cookieValue, freePort, onceInCI, spawnDaemon, waitFor
from tests.redis_server import startRedis
from tests.test_cluster import SID_A, SID_B, FakeConnection, ask, askUntil
from wsglue.cluster.redisurl import parseRedisURL
from wsglue.cluster.registry import ClusterRegistry

GRACE = 3.0
# The cluster registry's heartbeat and its time to live (3 heartbeats).
HEARTBEAT = 5.0
TTL = 3 * HEARTBEAT
# When a session held by a killed worker ends, at the latest: the dead
# node's heartbeat expires (TTL), its grace runs out (GRACE), and the next
# heartbeat of a live node reaps it (HEARTBEAT); with room for a loaded
# machine.
BOUND = TTL + GRACE + HEARTBEAT + 10
NODE = re.compile(r"\[worker (\d+)\] cluster node (\w+) subscribed")


class KilledWorkerPresenceTests(TestCase):
    """
    C{sessionStarted} and C{sessionEnded} each fire once per start and end
    on one process, and C{online}/C{onlineCount} answer right, when the
    worker holding a session dies.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        onceInCI()
        self.redis = yield startRedis(self)
        folder = tempfile.mkdtemp(prefix="wsglue-presence-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.record = os.path.join(folder, "record")
        self.port = freePort()
        self.daemon = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--redis",
                self.redis.url,
                "--workers",
                "2",
                "--handler",
                "tests.cluster_record_handler:Recording",
                "--presence-grace",
                str(GRACE),
                "--broadcast-interval",
                "0",
            ],
            env={"RECORD_FILE": self.record},
        )
        yield waitFor(lambda: self.daemon.output.count("subscribed at") >= 2, timeout=30)

    def events(self, kind: str, sid: str) -> List[List[str]]:
        """
        The recorded C{kind} (C{started} or C{ended}) of C{sid}.
        """
        return [line for line in readRecord(self.record) if line[0] == kind and line[1] == sid]

    @inlineCallbacks
    def nodeOf(self, pid: int) -> Any:
        """
        The cluster node id of worker C{pid}: its log line names the first
        8 characters, Redis's set of nodes the whole.
        """
        short = {int(p): n for p, n in NODE.findall(self.daemon.output)}[pid]
        nodes = yield self.redisCall("ZRANGE", "wsglue:0:nodes", 0, -1)
        (node,) = [n for n in nodes if n.startswith(short)]
        return node

    @inlineCallbacks
    def redisCall(self, *args: Any) -> Any:
        """
        One command on the test's Redis.
        """
        conn = yield txredisapi.Connection("127.0.0.1", self.redis.port, reconnect=False, convertNumbers=False)
        try:
            answer = yield conn.execute_command(*args)
        finally:
            yield conn.disconnect()
        return answer

    @inlineCallbacks
    def session(self, cookie: Optional[str] = None) -> Any:
        """
        A client (of the session of C{cookie}, or a new one); fires with
        (client, sid, cookie, the pid of the worker that holds it).
        """
        headers = {"Cookie": f"CookieName={cookie}"} if cookie else {}
        client = yield connect(self, self.port, headers=headers)
        if cookie is None:
            cookie = cookieValue(client.setCookie)
        pid = int((yield ask(client, "pid")).split()[1])
        return client, cookie.split(".", 1)[0], cookie, pid

    @inlineCallbacks
    def settled(self, sid: str, deadNode: str) -> Any:
        """
        Wait until nothing can end C{sid} any more on its own: the dead
        node has been reaped and C{sid} is not waiting for its grace.
        """

        @inlineCallbacks
        def poll() -> Any:
            for _ in range(int(BOUND / 0.2)):
                node = yield self.redisCall("ZSCORE", "wsglue:0:nodes", deadNode)
                due = yield self.redisCall("ZSCORE", "wsglue:0:due", sid)
                if node is None and due is None:
                    return
                yield deferLater(reactor, 0.2, lambda: None)
            raise AssertionError(f"node {deadNode} not reaped, or {sid} still due, within {BOUND}s")

        yield poll()

    @inlineCallbacks
    def test_killedHolderEndsOnce(self) -> Any:
        """
        A session whose only connection is on a worker killed with SIGKILL
        ends once, on a live worker, within the grace and the heartbeat
        bound; afterwards it is not online and is not counted.
        """
        client, sid, _, pid = yield self.session()
        yield waitFor(lambda: len(self.events("started", sid)) == 1, timeout=10)
        dead = yield self.nodeOf(pid)
        os.kill(pid, signal.SIGKILL)
        yield client.closed
        yield waitFor(lambda: len(self.events("ended", sid)) >= 1, timeout=BOUND)
        self.assertNotEqual(int(self.events("ended", sid)[0][2]), pid)
        observer, other, _, _ = yield self.session()
        self.assertEqual((yield ask(observer, f"online {sid}")), "online False")
        # Only the observer's own session is online.
        yield askUntil(observer, "onlineCount", "onlineCount 1", timeout=10)
        yield self.settled(sid, dead)
        self.assertEqual(len(self.events("ended", sid)), 1)
        self.assertEqual(len(self.events("started", sid)), 1)

    @inlineCallbacks
    def test_reconnectWithinGraceNoEnd(self) -> Any:
        """
        A session whose worker is killed and that reconnects (to another
        worker) within the grace neither ends nor starts again, even once
        the dead worker's part has been reaped; when it then leaves for
        good it ends once.
        """
        client, sid, cookie, pid = yield self.session()
        yield waitFor(lambda: len(self.events("started", sid)) == 1, timeout=10)
        dead = yield self.nodeOf(pid)
        os.kill(pid, signal.SIGKILL)
        yield client.closed
        back, again, _, other = yield self.session(cookie)
        self.assertEqual(again, sid)
        self.assertNotEqual(other, pid)
        yield self.settled(sid, dead)
        self.assertEqual(self.events("ended", sid), [])
        self.assertEqual(len(self.events("started", sid)), 1)
        self.assertEqual((yield ask(back, f"online {sid}")), "online True")
        self.assertEqual((yield ask(back, "onlineCount")), "onlineCount 1")
        back.sendClose()
        yield back.closed
        yield waitFor(lambda: len(self.events("ended", sid)) == 1, timeout=GRACE + HEARTBEAT + 10)
        observer, _, _, _ = yield self.session()
        self.assertEqual((yield ask(observer, f"online {sid}")), "online False")
        yield askUntil(observer, "onlineCount", "onlineCount 1", timeout=10)
        self.assertEqual(len(self.events("started", sid)), 1)
        self.assertEqual(len(self.events("ended", sid)), 1)

    @inlineCallbacks
    def test_killedDuringGraceEndsOnce(self) -> Any:
        """
        The worker that saw a session's last connection close is killed
        while the grace runs: the session still ends, once, on a live
        worker, within the grace and a heartbeat.
        """
        client, sid, _, pid = yield self.session()
        yield waitFor(lambda: len(self.events("started", sid)) == 1, timeout=10)
        client.sendClose()
        yield client.closed

        @inlineCallbacks
        def graceRuns() -> Any:
            for _ in range(100):
                due = yield self.redisCall("ZSCORE", "wsglue:0:due", sid)
                if due is not None:
                    return
                yield deferLater(reactor, 0.05, lambda: None)
            raise AssertionError(f"{sid} not waiting for its grace")

        yield graceRuns()
        dead = yield self.nodeOf(pid)
        os.kill(pid, signal.SIGKILL)
        yield waitFor(lambda: len(self.events("ended", sid)) >= 1, timeout=GRACE + HEARTBEAT + 10)
        self.assertNotEqual(int(self.events("ended", sid)[0][2]), pid)
        observer, _, _, _ = yield self.session()
        self.assertEqual((yield ask(observer, f"online {sid}")), "online False")
        yield self.settled(sid, dead)
        self.assertEqual(len(self.events("ended", sid)), 1)
        self.assertEqual(len(self.events("started", sid)), 1)


class PresenceInRedisTests(TestCase):
    """
    The presence scripts (L{wsglue.cluster.presence}) with registries in
    this process on a private Redis, a fast heartbeat, and nodes that stop
    talking to Redis as a dead process would.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        self.events: List[Any] = []

    def node(self, name: str) -> ClusterRegistry:
        registry = ClusterRegistry(parseRedisURL(self.redis.url), reactor=reactor, heartbeat=0.2)
        registry.configure(None, presenceGrace=0.3, clock=reactor)
        registry.watchPresence(
            lambda sid: self.events.append(("started", sid, name)),
            lambda sid: self.events.append(("ended", sid, name)),
        )
        registry.start()
        self.addCleanup(registry.stop)
        return registry

    def kinds(self, sid: str) -> List[str]:
        return [kind for kind, s, _ in self.events if s == sid]

    @inlineCallbacks
    def quiet(self, node: ClusterRegistry) -> Any:
        """
        C{node} says nothing to Redis any more, as if its process died.
        """
        node._beating.stop()
        node.stopTimers()
        yield node.link.stop()

    @inlineCallbacks
    def settled(self, node: ClusterRegistry, gone: str) -> Any:
        """
        Wait until node C{gone} was reaped and nothing is due any more.
        """
        for _ in range(200):
            score = yield node.link.execute("ZSCORE", node.nodesKey, gone)
            due = yield node.link.execute("ZCARD", node.dueKey)
            if score is None and not int(due):
                return
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"node {gone} not reaped, or ends still due")

    @inlineCallbacks
    def test_deadNodeEndedOnceByOne(self) -> Any:
        """
        Two live nodes reap at every heartbeat: the session that only a
        dead node held ends once, on one of them, after the grace.
        """
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        a.add(SID_A, FakeConnection())
        yield waitFor(lambda: self.kinds(SID_A) == ["started"])
        yield self.quiet(a)
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended"], timeout=10)
        yield self.settled(b, a.nodeId)
        self.assertEqual(self.kinds(SID_A), ["started", "ended"])
        self.assertIn(self.events[-1][2], ("b", "c"))
        self.assertFalse((yield b.online(SID_A)))
        self.assertEqual((yield c.onlineCount()), 0)

    @inlineCallbacks
    def test_heldElsewhereNotEnded(self) -> Any:
        """
        A session held by a dead node and a live one does not end when the
        dead one is reaped; it ends once the live one lets it go.
        """
        a, b = self.node("a"), self.node("b")
        a.add(SID_A, FakeConnection())
        conn = FakeConnection()
        b.add(SID_A, conn)
        yield waitFor(lambda: self.kinds(SID_A) == ["started"])
        yield self.quiet(a)
        yield self.settled(b, a.nodeId)
        self.assertEqual(self.kinds(SID_A), ["started"])
        self.assertTrue((yield b.online(SID_A)))
        b.remove(SID_A, conn)
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended"], timeout=10)

    @inlineCallbacks
    def test_takenForDeadStartsAgain(self) -> Any:
        """
        A node that did not beat for longer than the time to live is taken
        for dead: its session ends after the grace; once it beats again, it
        writes its presence again and the session, still connected there,
        starts again: every end between two starts.
        """
        a, b = self.node("a"), self.node("b")
        a.add(SID_A, FakeConnection())
        yield waitFor(lambda: self.kinds(SID_A) == ["started"])
        a._beating.stop()
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended"], timeout=10)
        a._beating.start(a.heartbeat, now=True)
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended", "started"], timeout=10)
        self.assertTrue((yield b.online(SID_A)))
        self.assertEqual((yield b.onlineCount()), 1)

    @inlineCallbacks
    def test_stoppedDuringGraceEndedElsewhere(self) -> Any:
        """
        A node that stops while a session's grace runs (its timers
        cancelled) leaves the end to another node.
        """
        a = self.node("a")
        self.node("b")
        conn = FakeConnection()
        a.add(SID_A, conn)
        yield waitFor(lambda: self.kinds(SID_A) == ["started"])
        a.remove(SID_A, conn)
        yield waitFor(lambda: bool(a._graces))
        a.stopTimers()
        yield a.stop()
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended"], timeout=10)
        self.assertEqual(self.events[-1][2], "b")

    @inlineCallbacks
    def test_backWithinGrace(self) -> Any:
        """
        A session whose only holder died and that comes back on another
        node after the dead one was reaped, within the grace, neither ends
        nor starts again.
        """
        a, b = self.node("a"), self.node("b")
        b.configure(None, presenceGrace=3.0, clock=reactor)
        a.add(SID_A, FakeConnection())
        yield waitFor(lambda: self.kinds(SID_A) == ["started"])
        yield self.quiet(a)

        @inlineCallbacks
        def due() -> Any:
            for _ in range(200):
                if (yield b.link.execute("ZSCORE", b.dueKey, SID_A)) is not None:
                    return
                yield deferLater(reactor, 0.05, lambda: None)
            raise AssertionError("never due")

        yield due()
        b.add(SID_A, FakeConnection())
        yield self.settled(b, a.nodeId)
        self.assertEqual(self.kinds(SID_A), ["started"])
        self.assertTrue((yield b.online(SID_A)))

    @inlineCallbacks
    def test_watcherErrorContained(self) -> Any:
        """
        A watcher that raises for one session is logged; the other
        sessions ended in the same answer are still told.
        """
        a, b = self.node("a"), self.node("b")

        def ended(sid: str) -> None:
            self.events.append(("ended", sid, "b"))
            if sid == SID_A:
                raise RuntimeError("boom")

        b.watchPresence(None, ended)
        a.add(SID_A, FakeConnection())
        a.add(SID_B, FakeConnection())
        yield waitFor(lambda: len(self.events) == 2)
        yield self.quiet(a)
        yield waitFor(lambda: self.kinds(SID_A) == ["started", "ended"] and self.kinds(SID_B) == ["started", "ended"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
