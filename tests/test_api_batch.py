"""
C{POST /api/batch} with C{--redis}: the messages of a batch are handed
over one after the other without waiting for Redis's answer to each (a
batch of 1,000 took 1,000 round trips to Redis), and still arrive in order.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.api_client import serveApi
from tests.common import waitFor
from tests.redis_server import startRedis
from tests.test_api import _eventually, session


class ClusterBatchTests(TestCase):
    """
    A batch posted to one process for a session held by another.
    """

    timeout = 60

    @inlineCallbacks
    def test_batchIsPipelinedAndInOrder(self) -> Any:
        """
        Every message of the batch is handed to the delivery before the
        first one's answer from Redis is awaited; the tab on the other
        process gets them all in order, and the results number them in
        order in the session's stream.
        """
        redis = yield startRedis(self)
        a = serveApi(self, "--redis", redis.url)
        b = serveApi(self, "--redis", redis.url)
        sid, (tab,) = yield session(self, b.port)
        yield waitFor(lambda: b.registry._subscribed and a.registry._subscribed)
        yield _eventually(lambda: a.registry.hasSession(sid))
        delivery = a.api.site.api.delivery
        waiting: List[int] = [0]
        most: List[int] = [0]
        send = delivery.send

        def counted(target: str, message: Any) -> Any:
            waiting[0] += 1
            most[0] = max(most[0], waiting[0])

            def answered(result: Any) -> Any:
                waiting[0] -= 1
                return result

            return send(target, message).addBoth(answered)

        self.patch(delivery, "send", counted)
        n = 200
        batch = {"messages": [{"session": sid, "data": str(i)} for i in range(n)]}
        status, body, _ = yield a.json("POST", "/api/batch", batch)
        self.assertEqual(status, 200, body)
        self.assertEqual(most[0], n)
        results = body["results"]
        self.assertEqual([r["delivered"] for r in results], [1] * n)
        offsets = [r["offset"] for r in results]
        self.assertEqual(offsets, list(range(offsets[0], offsets[0] + n)))
        self.assertEqual(len({r["epoch"] for r in results}), 1)
        received = []
        for _ in range(n):
            received.append((yield tab.nextMessage()))
        self.assertEqual(received, [str(i) for i in range(n)])
