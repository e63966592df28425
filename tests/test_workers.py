"""
Tests for C{--workers N}: the adopted socket in this process, and a real
parent with real worker processes serving real clients.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from typing import Any, Dict

from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import ROOT, connect, cookieValue, freePort, spawnDaemon, waitFor
from tests.ports import accepts
from tests.redis_server import startRedis
from tests.test_cluster import HANDLER, ask, askUntil
from wsglue.process.workers import FAMILY_VARIABLE, FD_VARIABLE, AdoptedEndpoint, adoptable, workerEndpoint
from wsglue.tap import Options

STARTED = re.compile(r"started worker (\d+) \(pid (\d+)\)")


class AdoptableTests(SynchronousTestCase):
    """
    Which ports workers can share.
    """

    def test_tcp(self) -> None:
        """
        TCP ports (v4, v6, bare port numbers) can be shared.
        """
        for description in ["tcp:9998", "tcp:0:interface=127.0.0.1", "tcp6:9998", "9998"]:
            self.assertTrue(adoptable(description), description)

    def test_notTLSNorUnix(self) -> None:
        """
        TLS ports cannot (the workers would each need the TLS layer), nor
        UNIX sockets (a worker closing its port would unlink the path).
        """
        self.assertFalse(adoptable("ssl:443:privateKey=k.pem"))
        self.assertFalse(adoptable("unix:/tmp/wsglue.sock"))

    def test_refusedClearly(self) -> None:
        """
        C{--workers 2} on a port workers cannot share is one clear error.
        """
        exc = self.assertRaises(
            UsageError,
            Options().parseOptions,
            ["--workers", "2", "--redis", "redis://h/0", "--port", "unix:/tmp/wsglue.sock"],
        )
        self.assertEqual(
            str(exc),
            "--workers 2 > 1 needs a tcp: --port, not 'unix:/tmp/wsglue.sock'"
            " (the workers share one TCP socket; terminate TLS in front of them)",
        )

    def test_workerEndpointFromEnvironment(self) -> None:
        """
        A process started as a worker adopts the descriptor and family its
        environment names; any other process adopts nothing.
        """
        self.assertIsNone(workerEndpoint(reactor, {}))
        endpoint = workerEndpoint(reactor, {FD_VARIABLE: "3", FAMILY_VARIABLE: str(int(socket.AF_INET6))})
        self.assertEqual((endpoint.fd, endpoint.family), (3, socket.AF_INET6))


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.got: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.got.called:
            self.got.callback(data)


class AdoptedEndpointTests(TestCase):
    """
    L{AdoptedEndpoint} on a socket bound in this process.
    """

    @inlineCallbacks
    def test_servesTheAdoptedSocket(self) -> Any:
        """
        Listening on an adopted, already bound socket serves connections
        made to its port.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        s.setblocking(False)
        self.addCleanup(s.close)
        port = yield AdoptedEndpoint(reactor, os.dup(s.fileno()), socket.AF_INET).listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", s.getsockname()[1]).connect(
            protocol.Factory.forProtocol(Collect)
        )
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(b"hello")
        self.assertEqual((yield client.got), b"hello")


def workerPids(output: str) -> Dict[int, int]:
    """
    The latest pid of each worker index, from the parent's log.
    """
    pids: Dict[int, int] = {}
    for index, pid in STARTED.findall(output):
        pids[int(index)] = int(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not serving; look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class WorkerPoolTests(TestCase):
    """
    C{twistd -n wsglue --workers 2 --redis URL} with real clients.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        self.port = freePort()
        self.parent = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--redis",
                self.redis.url,
                "--workers",
                "2",
                "--handler",
                HANDLER,
                "--broadcast-interval",
                "0",
            ],
        )
        yield self.parent.waitForOutput("started websocket server at")
        yield waitFor(lambda: self.parent.output.count("subscribed at") >= 2, timeout=20)
        self.workers = workerPids(self.parent.output)
        # Should the parent be killed, its workers must not outlive the test.
        self.addCleanup(self.reapWorkers)

    @inlineCallbacks
    def reapWorkers(self) -> Any:
        pids = set(workerPids(self.parent.output).values())
        self.parent.stop()
        yield waitFor(lambda: self.parent.ended.called, timeout=15)
        yield waitFor(lambda: not any(alive(p) for p in pids), timeout=15)

    @inlineCallbacks
    def client(self, sid: str = "") -> Any:
        headers = {"Cookie": f"CookieName={sid}"} if sid else {}
        client = yield connect(self, self.port, headers=headers)
        client.sid = sid or cookieValue(client.setCookie)
        client.pid = int((yield ask(client, "pid")).split()[1])
        return client

    @inlineCallbacks
    def clientsOnEveryWorker(self, sid: str = "", limit: int = 300) -> Any:
        """
        Connect until the clients cover every worker (at most C{limit}).
        """
        clients: Dict[int, Any] = {}
        for _ in range(limit):
            c = yield self.client(sid)
            if c.pid in clients:
                c.dropConnection(abort=True)
                yield c.closed
            else:
                clients[c.pid] = c
            if len(clients) == len(self.workers):
                break
        return clients

    @inlineCallbacks
    def test_connectionsSpread(self) -> Any:
        """
        Connections are served by both workers, never by the parent, and the
        parent says where it listens once.
        """
        clients = yield self.clientsOnEveryWorker()
        self.assertEqual(set(clients), set(self.workers.values()))
        self.assertNotIn(self.parent.pid, clients)
        self.assertEqual(self.parent.output.count("started websocket server at"), 1)

    @inlineCallbacks
    def test_behaveAsOne(self) -> Any:
        """
        Tabs of one session on different workers all receive a send issued
        on either worker, once each.
        """
        first = yield self.client()
        tabs = yield self.clientsOnEveryWorker(first.sid)
        self.assertEqual(set(tabs), set(self.workers.values()))
        everyTab = [first, *tabs.values()]
        control = yield self.client()
        yield askUntil(control, f"has {first.sid}", "has True")
        onControlsWorker = sum(1 for tab in everyTab if tab.pid == control.pid)
        reply = yield ask(control, f"send {first.sid} to every tab")
        self.assertEqual(reply, f"sent {onControlsWorker}")
        for tab in everyTab:
            self.assertEqual((yield tab.nextMessage()), "to every tab")
        # And no second copy: the next thing each tab hears is its answer.
        for tab in everyTab:
            self.assertEqual((yield ask(tab, "ping")), "pong")

    @inlineCallbacks
    def test_killedWorkerRestarted(self) -> Any:
        """
        A worker killed with SIGKILL is restarted under a new pid; the
        other worker keeps serving its clients meanwhile.
        """
        clients = yield self.clientsOnEveryWorker()
        victim, survivor = self.workers[1], self.workers[2]
        os.kill(victim, 9)
        yield clients[victim].closed
        self.assertEqual((yield ask(clients[survivor], "ping")), "pong")
        yield self.parent.waitForOutput(f"worker 1 (pid {victim}) exited (signal SIGKILL)")
        yield waitFor(lambda: workerPids(self.parent.output).get(1, victim) != victim, timeout=20)
        newcomer = workerPids(self.parent.output)[1]
        yield waitFor(lambda: self.parent.output.count("subscribed at") >= 3, timeout=20)
        self.workers = workerPids(self.parent.output)
        again = yield self.clientsOnEveryWorker()
        self.assertEqual(set(again), {newcomer, survivor})

    @inlineCallbacks
    def test_sigtermStopsAll(self) -> Any:
        """
        SIGTERM on the parent closes every client of every worker with 1001,
        stops the workers, and the parent exits 0.
        """
        clients = yield self.clientsOnEveryWorker()
        self.parent.signal("TERM")
        codes = yield defer.gatherResults([c.closed for c in clients.values()])
        self.assertEqual([code for code, reason in codes], [1001, 1001])
        yield waitFor(lambda: self.parent.ended.called, timeout=15)
        self.assertEqual(self.parent.ended.result, 0, self.parent.output)
        for index, pid in self.workers.items():
            self.assertIn(f"worker {index} (pid {pid}) stopped (status 0)", self.parent.output)

    @inlineCallbacks
    def test_sighupIgnored(self) -> Any:
        """
        SIGHUP, to the parent and to each worker (as a closed terminal sends
        it to them all), is logged and ignored: every worker goes on
        serving, none is restarted, and SIGTERM then stops them all with
        exit status 0.
        """
        clients = yield self.clientsOnEveryWorker()
        self.parent.signal("HUP")
        for pid in self.workers.values():
            os.kill(pid, signal.SIGHUP)
        yield waitFor(lambda: self.parent.output.count("received SIGHUP, ignored") >= 3, timeout=15)
        for pid in self.workers.values():
            self.assertIn(f"[worker {pid}] received SIGHUP, ignored", self.parent.output)
        for pid, client in clients.items():
            self.assertEqual((yield ask(client, "pid")), f"pid {pid}")
        self.assertEqual(workerPids(self.parent.output), self.workers)
        self.parent.signal("TERM")
        codes = yield defer.gatherResults([c.closed for c in clients.values()])
        self.assertEqual([code for code, reason in codes], [1001, 1001])
        yield waitFor(lambda: self.parent.ended.called, timeout=15)
        self.assertEqual(self.parent.ended.result, 0, self.parent.output)

    @inlineCallbacks
    def test_parentKilledWorkersFollow(self) -> Any:
        """
        If the parent dies without stopping its workers (SIGKILL), they
        notice and stop: no orphan keeps the port.
        """
        self.parent.signal("KILL")
        yield waitFor(lambda: self.parent.ended.called, timeout=15)
        pids = list(self.workers.values())
        yield waitFor(lambda: not any(alive(p) for p in pids), timeout=15)


class WorkerStartTests(TestCase):
    """
    Starting C{--workers N} the other ways a user would.
    """

    timeout = 60

    @inlineCallbacks
    def test_withoutRedisUnderTwistd(self) -> Any:
        """
        Under twistd, C{--workers 2} without C{--redis} is one line on
        stderr and exit status 2.
        """
        daemon = spawnDaemon(self, ["--port", f"tcp:{freePort()}:interface=127.0.0.1", "--workers", "2"])
        yield waitFor(lambda: daemon.ended.called, timeout=20)
        self.assertEqual(daemon.ended.result, 2)
        self.assertEqual(daemon.output.strip(), "wsglue: error: --workers 2 > 1 requires --redis")

    @inlineCallbacks
    def test_sigtermWhileStarting(self) -> Any:
        """
        A SIGTERM sent to the parent the moment its port accepts, while it
        is still starting its workers, is the normal stop: the workers
        started so far are stopped (no orphan) and the parent exits 0.
        Tried several times, to hit the moment.
        """
        redis = yield startRedis(self)
        for attempt in range(3):
            port = freePort()
            parent = spawnDaemon(
                self,
                [
                    "--port",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--redis",
                    redis.url,
                    "--workers",
                    "2",
                    "--broadcast-interval",
                    "0",
                ],
            )
            yield waitFor(lambda: accepts(port) or parent.ended.called, timeout=30, interval=0.002)
            parent.signal("TERM")
            yield waitFor(lambda: parent.ended.called, timeout=30)
            self.assertEqual(parent.ended.result, 0, f"attempt {attempt}:\n{parent.output}")
            pids = list(workerPids(parent.output).values())
            yield waitFor(lambda: not any(alive(p) for p in pids), timeout=15)
            self.assertNotIn("Traceback", parent.output)

    @inlineCallbacks
    def test_glueTac(self) -> Any:
        """
        C{twistd -ny glue.tac} with C{WSGLUE_WORKERS=2} and C{WSGLUE_REDIS}
        runs two workers.
        """
        redis = yield startRedis(self)
        port = freePort()
        parent = spawnDaemon(
            self,
            [],
            tac=os.path.join(ROOT, "glue.tac"),
            env={
                "WSGLUE_PORT": f"tcp:{port}:interface=127.0.0.1",
                "WSGLUE_REDIS": redis.url,
                "WSGLUE_WORKERS": "2",
                "WSGLUE_HANDLER": HANDLER,
                "WSGLUE_BROADCAST_INTERVAL": "0",
            },
        )
        yield waitFor(lambda: parent.output.count("subscribed at") >= 2, timeout=20)
        workers = set(workerPids(parent.output).values())
        self.assertEqual(len(workers), 2)
        client = yield connect(self, port)
        self.assertIn(int((yield ask(client, "pid")).split()[1]), workers)
        parent.signal("TERM")
        yield waitFor(lambda: parent.ended.called and not any(alive(p) for p in workers), timeout=20)
        self.assertEqual(parent.ended.result, 0, parent.output)
