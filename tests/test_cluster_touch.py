"""
With C{--redis}, the times to live that the closes of C{wsglue.v1}
connections refresh (their session streams, their client ids) are sent to
Redis in batches per reactor turn, not as a script per connection: when
100,000 connections closed at once, each worker queued tens of thousands
of scripts, the last replies came after the link's reply timeout, the link
was cut and the hellos of that moment were refused (1013).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import serve, waitFor
from tests.redis_server import startRedis
from tests.test_client import RecordingClient
from tests.test_sources import redisCall
from wsglue.cluster.streams import LEAVE, TOUCH

CLIENTS = 20


def scriptCalls(redis: Any) -> int:
    """
    How many EVALSHA and EVAL commands Redis has run.
    """
    info = redisCall(redis, "INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else str(info)
    calls = 0
    for line in text.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return calls


class ClosedTogetherTests(TestCase):
    """
    Many C{wsglue.v1} connections of one process close together.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        self.running = serve(
            self,
            "--redis",
            self.redis.url,
            "--handler",
            "tests.handlers_for_tests:Recorder",
            "--broadcast-interval",
            "0",
            "--history-ttl",
            "120",
        )
        yield waitFor(lambda: self.running.registry._subscribed, timeout=10)
        # Known to Redis already, so that each is counted once per run (the
        # first EVALSHA of an unknown script is followed by an EVAL).
        for script in (LEAVE, TOUCH):
            redisCall(self.redis, "SCRIPT", "LOAD", script)

    @inlineCallbacks
    def test_touchedInBatches(self) -> Any:
        """
        Each closed session's stream gets the history ttl again, with one
        script for all of them: Redis runs a script per session (its
        presence) and one more, not three per session.
        """
        clients: List[RecordingClient] = []
        for _ in range(CLIENTS):
            c = RecordingClient(self.running.url, reactor=reactor)
            self.addCleanup(c.stop)
            c.start()
            clients.append(c)
        yield waitFor(lambda: all(len(c.welcomes) == 1 for c in clients), timeout=20)
        registry = self.running.registry
        sids = [c.sid() for c in clients]
        streams = [registry.streamKeys(sid)[0] for sid in sids]
        for key in streams:
            # Far longer than the ttl: only a touch brings it back to it.
            self.assertEqual(redisCall(self.redis, "PEXPIRE", key, 10_000_000), 1)
        before = scriptCalls(self.redis)
        for c in clients:
            assert c.connection is not None
            c.connection.transport.abortConnection()
        yield waitFor(lambda: not any(sid in registry for sid in sids), timeout=10)
        yield waitFor(lambda: all(0 < redisCall(self.redis, "PTTL", key) <= 120_000 for key in streams), timeout=10)
        self.assertLessEqual(scriptCalls(self.redis) - before, CLIENTS + 1)
