"""
C{Idempotency-Key}: a request that repeats a key within L{TTL} seconds gets
the first answer again and does nothing again.

L{MemoryKeys} keeps the answers in this process; L{RedisKeys} (C{--redis})
in Redis, claimed with C{SET NX EX}, so whichever process gets the repeat
answers it.  Only successful answers are kept: a request that failed did
nothing, and may be tried again with the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

# How long a key is remembered, in seconds.
TTL = 300
# The most keys kept in memory (the oldest go first past it): a bound on
# memory whatever the request rate.
MEMORY_LIMIT = 100_000

# What a claimed key holds until its answer is known.
PENDING = b"pending"

Answer = Tuple[int, bytes]


class KeyInUse(Exception):
    """
    The key's first request is still being answered.
    """


def scopedKey(method: bytes, uri: bytes, contentType: bytes, body: bytes, key: str) -> str:
    """
    The name under which C{key} is kept: per request (method, path and
    query, body and its type), so that a key reused for another request is
    another key and never answers it with what was done for the first.
    """
    digest = hashlib.sha256()
    for part in (method, uri, contentType, hashlib.sha256(body).digest(), key.encode("ascii")):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


class MemoryKeys:
    """
    Answers kept in this process for L{TTL} seconds.
    """

    def __init__(self, clock: Any, ttl: float = TTL, limit: int = MEMORY_LIMIT) -> None:
        self.clock = clock
        self.ttl = ttl
        self.limit = limit
        # key -> (expires, answer or None while pending), oldest first.
        self._kept: "OrderedDict[str, Tuple[float, Optional[Answer]]]" = OrderedDict()

    def _prune(self, now: float) -> None:
        kept = self._kept
        while kept:
            key, (expires, _) = next(iter(kept.items()))
            if expires > now and len(kept) <= self.limit:
                break
            kept.popitem(last=False)

    def claim(self, key: str) -> Deferred:
        """
        Fire with C{None} if C{key} is new (it is now claimed: L{keep} or
        L{release} it), or with the first answer; fail with L{KeyInUse}
        while the first is still being answered.
        """
        now = self.clock.seconds()
        self._prune(now)
        entry = self._kept.get(key)
        if entry is None:
            self._kept[key] = (now + self.ttl, None)
            return defer.succeed(None)
        if entry[1] is None:
            return defer.fail(KeyInUse())
        return defer.succeed(entry[1])

    def keep(self, key: str, answer: Answer) -> Deferred:
        entry = self._kept.get(key)
        if entry is not None:
            self._kept[key] = (entry[0], answer)
        return defer.succeed(None)

    def release(self, key: str) -> Deferred:
        self._kept.pop(key, None)
        return defer.succeed(None)


class RedisKeys:
    """
    Answers kept in Redis for L{TTL} seconds, shared by every process on it.

    @param link: the cluster's L{wsglue.cluster.link.IRedisLink}.
    @param prefix: the cluster's key prefix (C{wsglue:<db>:}).
    """

    # While another process answers the first request: how long to wait for
    # its answer before saying the key is in use.
    waitFor = 2.0
    pollEvery = 0.05

    def __init__(self, link: Any, prefix: str, clock: Any, ttl: int = TTL) -> None:
        self.link = link
        self.prefix = prefix + "idem:"
        self.clock = clock
        self.ttl = ttl

    @defer.inlineCallbacks
    def claim(self, key: str) -> Any:
        name = self.prefix + key
        claimed = yield self.link.execute("SET", name, PENDING, "NX", "EX", str(self.ttl))
        if claimed:
            return None
        waited = 0.0
        while True:
            value = yield self.link.execute("GET", name)
            if value is None:
                # Released (the first failed) or expired since: ours now.
                claimed = yield self.link.execute("SET", name, PENDING, "NX", "EX", str(self.ttl))
                if claimed:
                    return None
            elif _bytes(value) != PENDING:
                stored = json.loads(_bytes(value))
                return int(stored["status"]), stored["body"].encode("utf-8")
            if waited >= self.waitFor:
                raise KeyInUse()
            yield deferLater(self.clock, self.pollEvery, lambda: None)
            waited += self.pollEvery

    def keep(self, key: str, answer: Answer) -> Deferred:
        value = json.dumps({"status": answer[0], "body": answer[1].decode("utf-8")})
        d: Deferred = self.link.execute("SET", self.prefix + key, value, "XX", "EX", str(self.ttl))
        return d

    def release(self, key: str) -> Deferred:
        d: Deferred = self.link.execute("DEL", self.prefix + key)
        return d


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
