"""
The reconnect soak: 10,000 scripted reconnects of C{wsglue.v1} clients
across the two workers of a real C{twistd wsglue --workers 2 --redis}
daemon, while the HTTP API sends numbered messages to every session and to
the broadcast stream at a steady rate.

Each of L{CLIENTS} clients (L{wsglue.client.GlueClient}, one session each)
is dropped L{RECONNECTS} times, a short random while after each welcome:
by a TCP abort (no close frame) or by a clean close (1000), mixed; now
and then an attempt is also aborted right after its C{hello}, before any
answer (not counted).  The client comes back by itself and resumes from
its positions.  At the end, counted by content against what the API
answered (each message's offset and epoch): nothing lost, nothing twice,
each stream's offsets +1 on every connection, every resume C{recovered:
true}, no stream message before a welcome, and exactly 10,000 resumes,
served by both workers.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.api_client import KEYS, keyFile
from tests.common import freePort, spawnDaemon, waitFor
from tests.redis_server import startRedis
from wsglue.client import GlueClient

CLIENTS = 200
RECONNECTS = 50
TOTAL = CLIENTS * RECONNECTS
# The API's pace: every TICK seconds one batch, with a message for each of
# PER_TICK sessions (in turn) and one broadcast.
TICK = 0.05
PER_TICK = 40
# Of the scripted drops, the share that are TCP aborts (the rest close
# cleanly with 1000); and the share of attempts aborted after their hello.
ABORTS = 0.5
HELLO_ABORTS = 0.05


class SoakClient(GlueClient):
    """
    A L{GlueClient} that drops itself L{RECONNECTS} times and checks what
    it receives as it comes.

    @ivar session: the session stream's C{(offset, text)} received, in order.
    @ivar broadcasts: the same for the broadcast stream.
    @ivar faults: what went against the protocol's promises, in words.
    """

    def __init__(self, index: int, url: str, rng: random.Random, done: Deferred) -> None:
        GlueClient.__init__(self, url, rand=rng.random, minDelay=0.05, maxDelay=1.0)
        self.index = index
        self.rng = rng
        self.done = done
        self.session: List[Tuple[int, str]] = []
        self.broadcasts: List[Tuple[int, str]] = []
        self.faults: List[str] = []
        self.last: Dict[str, Tuple[str, int]] = {}
        self.first: Optional[Dict[str, Any]] = None
        self.drops = 0
        self.aborts = 0
        self.helloAborts = 0
        self.resumes = 0
        self.unrecovered = 0
        self.replayed = 0
        self.unscripted: List[Optional[int]] = []
        self._replayUpTo: Dict[str, int] = {}
        self._dropping: Any = None
        # Whether the script runs (the drops wait for the traffic).
        self.scripting = False

    def sid(self) -> str:
        assert self.cookie is not None
        return self.cookie.split("=", 1)[1]

    # -- checks --------------------------------------------------------------

    def _received(self, conn: Any, payload: bytes, isBinary: bool) -> None:
        if payload.startswith(b'{"t":"m"') and (conn is not self.connection or not self.welcomed):
            self.faults.append(f"a stream message before the welcome: {payload[:80]!r}")
        GlueClient._received(self, conn, payload, isBinary)

    def welcome(self, frame: Dict[str, Any]) -> None:
        positions = {k: (frame[k][0], frame[k][1]) for k in "sb"}
        if self.first is None:
            self.first = frame
            if frame["recovered"]:
                self.faults.append("a fresh hello recovered")
            self.last = positions
        else:
            self.resumes += 1
            if not frame["recovered"]:
                self.unrecovered += 1
                self.faults.append(f"resume {self.resumes} not recovered: {frame} after {self.last}")
                self.last = positions
            for k in "sb":
                if positions[k][0] != self.last[k][0]:
                    self.faults.append(f"epoch of {k} changed: {frame} after {self.last}")
            self._replayUpTo = {k: positions[k][1] for k in "sb"}
        if not self.scripting:
            return
        if self.drops < RECONNECTS:
            self._dropping = self.clock.callLater(self.rng.uniform(0, 0.03), self._drop, self.connection)
        elif not self.done.called:
            self.done.callback(self)

    def messageReceived(self, stream: str, offset: int, message: Any) -> None:
        epoch, last = self.last[stream]
        if offset != last + 1:
            self.faults.append(f"{stream} offset {offset} after {last}")
        self.last[stream] = (epoch, offset)
        if offset <= self._replayUpTo.get(stream, 0):
            self.replayed += 1
        (self.session if stream == "s" else self.broadcasts).append((offset, message))

    # -- the script ----------------------------------------------------------

    def _opened(self, conn: Any) -> None:
        GlueClient._opened(self, conn)
        if self.scripting and self.drops < RECONNECTS and self.rng.random() < HELLO_ABORTS:
            self.helloAborts += 1
            conn.transport.abortConnection()

    def _drop(self, conn: Any) -> None:
        self._dropping = None
        if conn is not self.connection or not self.welcomed:
            self.faults.append("the connection to drop was gone already")
            return
        self.drops += 1
        if self.rng.random() < ABORTS:
            self.aborts += 1
            conn.transport.abortConnection()
        else:
            conn.sendClose(1000)

    def _closed(self, conn: Any, code: Optional[int]) -> None:
        if self._dropping is not None and self._dropping.active():
            # Closed before the script dropped it: by the server.
            self._dropping.cancel()
            self._dropping = None
            self.unscripted.append(code)
        GlueClient._closed(self, conn, code)


class Sender:
    """
    Posts a batch to the API every L{TICK} seconds: a numbered message for
    each of the next L{PER_TICK} sessions, and a numbered broadcast; keeps
    the offset and epoch the API answered for each.
    """

    def __init__(self, http: HTTPClient, base: str, sids: List[str]) -> None:
        self.http = http
        self.url = base + "/api/batch"
        self.sids = sids
        self.sent: Dict[str, List[Tuple[int, str]]] = {sid: [] for sid in sids}
        self.broadcasts: List[Tuple[int, str]] = []
        self.epochs: Dict[Optional[str], set] = {}
        self.faults: List[str] = []
        self.running = False
        self.finished: Optional[Deferred] = None

    def start(self) -> None:
        self.running = True
        self.finished = self._loop()

    @inlineCallbacks
    def stop(self) -> Any:
        self.running = False
        yield self.finished

    @inlineCallbacks
    def _loop(self) -> Any:
        tick = 0
        headers = {"Authorization": [f"Bearer {KEYS[0]}"], "Content-Type": ["application/json"]}
        while self.running:
            targets: List[Optional[str]] = []
            messages = []
            for j in range(PER_TICK):
                sid = self.sids[(tick * PER_TICK + j) % len(self.sids)]
                targets.append(sid)
                messages.append({"session": sid, "data": f"{sid[:8]}.{len(self.sent[sid]) + 1}"})
            targets.append(None)
            messages.append({"session": None, "data": f"b.{tick + 1}"})
            started = reactor.seconds()
            response = yield self.http.post(self.url, data=json.dumps({"messages": messages}).encode(), headers=headers)
            body = yield treq.content(response)
            if response.code != 200:
                self.faults.append(f"batch {tick}: {response.code} {body[:200]!r}")
                return
            for target, message, result in zip(targets, messages, json.loads(body)["results"]):
                if result["offset"] is None:
                    self.faults.append(f"no stream for {message}: {result}")
                    continue
                self.epochs.setdefault(target, set()).add(result["epoch"])
                entry = (result["offset"], message["data"])
                (self.broadcasts if target is None else self.sent[target]).append(entry)
            tick += 1
            left = TICK - (reactor.seconds() - started)
            if left > 0 and self.running:
                yield deferLater(reactor, left, lambda: None)


class ReconnectSoak(TestCase):
    """
    10,000 scripted reconnects across two workers, with traffic.
    """

    timeout = 170

    @inlineCallbacks
    def test_tenThousandReconnects(self) -> Any:
        """
        L{CLIENTS} clients, each dropped L{RECONNECTS} times (aborts and
        clean closes) while the API sends to their sessions and broadcasts:
        every resume is recovered, each client gets exactly what the API
        sent to its session and to everyone (by content and offset),
        offsets +1, and both workers serve.
        """
        began = time.monotonic()
        redis = yield startRedis(self)
        port, apiPort = freePort(), freePort()
        folder = tempfile.mkdtemp(prefix="wsglue-soak-")
        self.addCleanup(shutil.rmtree, folder, True)
        log = os.path.join(folder, "twistd.log")
        daemon = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--api",
                f"tcp:{apiPort}:interface=127.0.0.1",
                "--api-key-file",
                keyFile(self),
                "--redis",
                redis.url,
                "--workers",
                "2",
                "--broadcast-interval",
                "0",
                "--history-size",
                "1000",
            ],
            # Two lines per connection: to a file, not through this process.
            twistdArgs=["--logfile", log],
        )

        def logText() -> str:
            # twistd rotates its log file every megabyte: twistd.log.N too.
            text = []
            for name in sorted(os.listdir(folder), reverse=True):
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                    text.append(f.read())
            return "".join(text)

        yield waitFor(
            lambda: (
                daemon.ended.called
                or (logText().count("subscribed at") >= 2 and logText().count("accepting api requests at") >= 2)
            ),
            timeout=30,
            interval=0.1,
        )
        self.assertFalse(daemon.ended.called, logText()[-2000:])

        rng = random.Random(int(os.environ.get("WSGLUE_SOAK_SEED", "0")) or None)
        url = f"ws://127.0.0.1:{port}/"
        clients: List[SoakClient] = []
        finished: List[Deferred] = []
        for i in range(CLIENTS):
            done: Deferred = Deferred()
            c = SoakClient(i, url, random.Random(rng.random()), done)
            clients.append(c)
            finished.append(done)
            self.addCleanup(c.stop)
        # Every client welcomed once before the traffic starts, so that
        # each must get all of it; the drops wait for the traffic too.
        for c in clients:
            c.start()
        yield waitFor(lambda: all(c.first is not None for c in clients), timeout=30)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))
        sender = Sender(http, f"http://127.0.0.1:{apiPort}", [c.sid() for c in clients])
        self.assertEqual(len(set(sender.sids)), CLIENTS)
        sender.start()
        soakStart = time.monotonic()
        for c in clients:
            c.scripting = True
            c._dropping = c.clock.callLater(rng.uniform(0, 0.05), c._drop, c.connection)
        yield waitFor(lambda: all(d.called for d in finished) or bool(sender.faults), timeout=120, interval=0.1)
        soakSeconds = time.monotonic() - soakStart
        yield sender.stop()
        self.assertEqual(sender.faults, [])

        # Everything sent is delivered: each client reaches the last offsets.
        def caughtUp() -> bool:
            lastB = sender.broadcasts[-1][0]
            return all(
                c.last["b"][1] >= lastB and c.last["s"][1] >= (sender.sent[c.sid()] or [(0, "")])[-1][0]
                for c in clients
            )

        yield waitFor(caughtUp, timeout=30, interval=0.05)

        lost = duplicated = 0
        faults: List[str] = []
        for c in clients:
            faults += [f"client {c.index}: {f}" for f in c.faults[:5]]
            for got, expected in ((c.session, sender.sent[c.sid()]), (c.broadcasts, sender.broadcasts)):
                counts = Counter(text for _, text in got)
                lost += sum(1 for _, text in expected if text not in counts)
                duplicated += sum(n - 1 for n in counts.values() if n > 1)
                if got != expected:
                    faults.append(f"client {c.index}: received {got[:3]}... != sent {expected[:3]}...")
        resumes = sum(c.resumes for c in clients)
        drops = sum(c.drops for c in clients)
        unscripted = [code for c in clients for code in c.unscripted]
        workers = Counter(re.findall(r"\[worker (\d+)\] (?:info )?session opened", logText()))
        summary = {
            "resumes": resumes,
            "drops": drops,
            "aborts": sum(c.aborts for c in clients),
            "helloAborts": sum(c.helloAborts for c in clients),
            "unrecovered": sum(c.unrecovered for c in clients),
            "unscripted": Counter(unscripted),
            "replayed": sum(c.replayed for c in clients),
            "sessionMessages": sum(len(v) for v in sender.sent.values()),
            "broadcasts": len(sender.broadcasts),
            "lost": lost,
            "duplicated": duplicated,
            "connectionsPerWorker": dict(workers),
            "soakSeconds": round(soakSeconds, 1),
            "testSeconds": round(time.monotonic() - began, 1),
        }
        print(f"\nreconnect soak: {summary}")
        self.assertEqual(len(faults), 0, faults[:20])
        self.assertEqual((lost, duplicated), (0, 0))
        self.assertEqual(drops, TOTAL)
        self.assertEqual(resumes, TOTAL, summary)
        self.assertEqual(unscripted, [])
        self.assertEqual(summary["unrecovered"], 0)
        self.assertEqual(len(sender.epochs), CLIENTS + 1)
        self.assertTrue(all(len(e) == 1 for e in sender.epochs.values()), sender.epochs)
        # Each worker served a real share of the connections.
        self.assertEqual(len(workers), 2, workers)
        self.assertGreater(min(workers.values()), TOTAL // 10, workers)
        # The soak did exercise gaps: messages were missed and replayed.
        self.assertGreater(summary["replayed"], 0)
