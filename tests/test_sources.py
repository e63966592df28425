"""
Tests for C{--source redis-stream://...}: the URL checked at option
parsing, what an entry asks for, and, against a real redis-server, delivery
to the right tabs, bad entries copied to C{NAME:dead}, where the group
starts, claiming what a dead consumer left pending, Redis going away.
"""

from __future__ import annotations

import base64
from typing import Any, List

from twisted.internet.defer import inlineCallbacks
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, cookieValue, options, serve, waitFor
from tests.redis_server import startRedis
from wsglue.sources.entries import DeadEntry, Delivery, readEntry
from wsglue.sources.redisstream import RedisError, blockingCommands, parseStreamURL

SID_X = "a" * 40


class UrlTests(SynchronousTestCase):
    """
    C{--source} URLs are checked while the options are parsed, each
    mistake one line.
    """

    def error(self, url: str) -> str:
        return str(self.assertRaises(UsageError, options, "--source", url))

    def test_parsed(self) -> None:
        """
        A full URL gives the server, database, stream, group and start.
        """
        o = options("--source", "redis-stream://:pw@127.0.0.1:6380/2?stream=out&group=gw&start=0")
        (spec,) = o["sources"]
        self.assertEqual(
            (spec.url.host, spec.url.port, spec.url.db, spec.url.password, spec.stream, spec.group, spec.start),
            ("127.0.0.1", 6380, 2, "pw", "out", "gw", "0"),
        )
        self.assertEqual(spec.claimIdle, 30.0)
        self.assertNotIn("pw", str(spec))

    def test_repeatable(self) -> None:
        """
        C{--source} may be given more than once; the group starts at the
        stream's end by default.
        """
        o = options(
            "--source",
            "redis-stream://127.0.0.1:6379/0?stream=a&group=g",
            "--source",
            "redis-stream://127.0.0.1:6379/0?stream=b&group=g",
        )
        self.assertEqual([s.stream for s in o["sources"]], ["a", "b"])
        self.assertEqual(o["sources"][0].start, "$")

    def test_errors(self) -> None:
        """
        A wrong scheme, a missing stream or group, an unknown parameter, a
        bad start or claim-idle, a bad database: one line naming it.
        """
        for url, words in [
            ("kafka://x/y", "unknown kind of source"),
            ("redis-stream://127.0.0.1:6379/0?group=g", "stream=NAME is required"),
            ("redis-stream://127.0.0.1:6379/0?stream=s", "group=GROUP is required"),
            ("redis-stream://127.0.0.1:6379/0?stream=s&group=g&x=1", "unknown parameter 'x'"),
            ("redis-stream://127.0.0.1:6379/0?stream=s&group=g&start=5", "start must be 0"),
            ("redis-stream://127.0.0.1:6379/0?stream=s&group=g&claim-idle=-1", "claim-idle must be"),
            ("redis-stream://127.0.0.1:6379/zz?stream=s&group=g", "the database must be a number"),
            ("redis-stream://127.0.0.1:6379/0?stream=s&stream=t&group=g", "stream is given twice"),
        ]:
            message = self.error(url)
            self.assertIn(words, message, url)
            self.assertIn("--source", message)
            self.assertNotIn("\n", message)

    def test_environment(self) -> None:
        """
        C{WSGLUE_SOURCE} spells C{--source}.
        """
        from wsglue.options import optionsFromEnvironment
        from wsglue.tap import Options

        argv = optionsFromEnvironment(Options, {"WSGLUE_SOURCE": "redis-stream://h:1/0?stream=s&group=g"})
        self.assertEqual(argv, ["--source=redis-stream://h:1/0?stream=s&group=g"])


class EntryTests(SynchronousTestCase):
    """
    L{readEntry}: what an entry asks for, or why it cannot be delivered.
    """

    def test_good(self) -> None:
        """
        C{session} + C{data} is a text message to that session; C{broadcast}
        + C{data_b64} is binary to everyone.
        """
        self.assertEqual(readEntry({b"session": SID_X.encode(), b"data": "hé".encode()}), Delivery(SID_X, "hé"))
        self.assertEqual(
            readEntry({b"broadcast": b"", b"data_b64": base64.b64encode(b"\x00\xff")}), Delivery(None, b"\x00\xff")
        )

    def test_dead(self) -> None:
        """
        No target, both targets, a bad id, no data, both data, bad base64,
        bad UTF-8, too big: each a reason.
        """
        cases = [
            ({b"data": b"x"}, "no session or broadcast"),
            ({b"session": SID_X.encode(), b"broadcast": b"1", b"data": b"x"}, "both session and broadcast"),
            ({b"session": b"ABC", b"data": b"x"}, "session is not 40 lowercase hex"),
            ({b"broadcast": b"1"}, "no data or data_b64"),
            ({b"broadcast": b"1", b"data": b"x", b"data_b64": b"eA=="}, "both data and data_b64"),
            ({b"broadcast": b"1", b"data_b64": b"!!"}, "data_b64 is not valid base64"),
            ({b"broadcast": b"1", b"data": b"\xff"}, "data is not valid UTF-8"),
        ]
        for fields, reason in cases:
            result = readEntry(fields)
            self.assertIsInstance(result, DeadEntry, fields)
            assert isinstance(result, DeadEntry)
            self.assertIn(reason, result.reason)
        big = readEntry({b"broadcast": b"1", b"data": b"x" * 11}, maxMessageSize=10)
        self.assertEqual(big, DeadEntry("the message is more than 10 bytes"))


def redisCall(redis: Any, *command: Any) -> Any:
    (reply,) = blockingCommands(_url(redis), [command])
    if isinstance(reply, RedisError):
        raise reply
    return reply


def _url(redis: Any) -> Any:
    from wsglue.cluster.redisurl import parseRedisURL

    return parseRedisURL(redis.url)


def sourceOf(service: Any) -> Any:
    return service.service.getServiceNamed("source-0")


def pendingCount(redis: Any, stream: str = "out", group: str = "gw") -> int:
    return int(redisCall(redis, "XPENDING", stream, group)[0])


class RedisStreamTests(TestCase):
    """
    A source reading a real redis-server, delivering to a service in this
    process.
    """

    timeout = 60

    @inlineCallbacks
    def start(self, query: str = "", *argv: str) -> Any:
        self.redis = yield startRedis(self)
        url = self.redis.url.replace("redis://", "redis-stream://") + f"?stream=out&group=gw{query}"
        self.service = serve(self, "--source", url, *argv)
        yield sourceOf(self.service).whenReady()
        return self.service

    @inlineCallbacks
    def tab(self, sid: str = "") -> Any:
        headers = {"Cookie": f"CookieName={sid}"} if sid else None
        client = yield connect(self, self.service.port, headers=headers)
        return (sid or cookieValue(client.setCookie)), client

    def xadd(self, *fields: Any) -> Any:
        return redisCall(self.redis, "XADD", "out", "*", *fields)

    @inlineCallbacks
    def test_deliveredToTheRightTabs(self) -> None:
        """
        An entry with C{session} reaches that session's tabs only (text from
        C{data}, binary from C{data_b64}); one with C{broadcast} reaches
        every tab; each is acknowledged and counted.
        """
        yield self.start()
        sid, a1 = yield self.tab()
        _, a2 = yield self.tab(sid)
        _, b = yield self.tab()
        self.xadd("session", sid, "data", "hello")
        self.xadd("session", sid, "data_b64", base64.b64encode(b"\x00\x01\xff").decode())
        self.xadd("broadcast", "1", "data", "everyone")
        for tab in (a1, a2):
            self.assertEqual((yield tab.nextMessage()), "hello")
            self.assertEqual((yield tab.nextMessage()), b"\x00\x01\xff")
            self.assertEqual((yield tab.nextMessage()), "everyone")
        self.assertEqual((yield b.nextMessage()), "everyone")
        counters = self.service.service.counters
        yield waitFor(lambda: counters["source_entries:delivered"] == 3)
        yield waitFor(lambda: pendingCount(self.redis) == 0)
        self.assertEqual(counters["source_entries:dead"], 0)

    @inlineCallbacks
    def test_badEntriesToDead(self) -> None:
        """
        Entries that cannot be delivered as written are copied to
        C{out:dead} with their reason and the original fields, and
        acknowledged; the good entry behind them is delivered.
        """
        yield self.start()
        sid, tab = yield self.tab()
        self.xadd("data", "nobody")
        self.xadd("session", "XYZ", "data", "bad id")
        self.xadd("broadcast", "1", "data_b64", "not base64!")
        self.xadd("session", sid, "broadcast", "1", "data", "both")
        self.xadd("session", sid, "data", "after")
        self.assertEqual((yield tab.nextMessage()), "after")
        yield waitFor(lambda: self.service.service.counters["source_entries:dead"] == 4)
        dead = redisCall(self.redis, "XRANGE", "out:dead", "-", "+")
        reasons = [dict(zip(f[::2], f[1::2]))[b"reason"].decode() for _, f in dead]
        self.assertEqual(
            reasons,
            [
                "no session or broadcast",
                "session is not 40 lowercase hex characters",
                "data_b64 is not valid base64",
                "both session and broadcast",
            ],
        )
        first = dict(zip(dead[0][1][::2], dead[0][1][1::2]))
        self.assertEqual(first[b"data"], b"nobody")
        self.assertIn(b"entry", first)
        yield waitFor(lambda: pendingCount(self.redis) == 0)

    @inlineCallbacks
    def test_deliveryFailsToDead(self) -> None:
        """
        An entry whose delivery raises goes to C{out:dead} (reason
        C{delivery failed: ...}) instead of being retried for ever; the
        entry behind it is delivered.
        """
        yield self.start()
        sid, tab = yield self.tab()
        registry = self.service.registry
        send = registry.send

        def failing(target: str, message: Any) -> int:
            if message == "poison":
                raise RuntimeError("boom")
            return send(target, message)

        registry.send = failing
        self.xadd("session", sid, "data", "poison")
        self.xadd("session", sid, "data", "fine")
        self.assertEqual((yield tab.nextMessage()), "fine")
        yield waitFor(lambda: pendingCount(self.redis) == 0)
        (dead,) = redisCall(self.redis, "XRANGE", "out:dead", "-", "+")
        self.assertEqual(dict(zip(dead[1][::2], dead[1][1::2]))[b"reason"], b"delivery failed: RuntimeError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_groupAtTheEnd(self) -> None:
        """
        Without C{start=0} the group is created at the stream's end: an
        entry already there is not delivered, the next one is.
        """
        self.redis = yield startRedis(self)
        redisCall(self.redis, "XADD", "out", "*", "broadcast", "1", "data", "old")
        url = self.redis.url.replace("redis://", "redis-stream://") + "?stream=out&group=gw"
        self.service = serve(self, "--source", url)
        yield sourceOf(self.service).whenReady()
        _, tab = yield self.tab()
        self.xadd("broadcast", "1", "data", "new")
        self.assertEqual((yield tab.nextMessage()), "new")
        counters = self.service.service.counters
        yield waitFor(lambda: counters["source_entries:delivered"] >= 1)
        self.assertEqual(counters["source_entries:delivered"], 1)

    @inlineCallbacks
    def test_startZero(self) -> None:
        """
        With C{start=0} the entries already in the stream are read (and
        handed to the registry: no tab of that session is open).
        """
        self.redis = yield startRedis(self)
        sid = "b" * 40
        redisCall(self.redis, "XADD", "out", "*", "session", sid, "data", "old")
        url = self.redis.url.replace("redis://", "redis-stream://") + "?stream=out&group=gw&start=0"
        self.service = serve(self, "--source", url)
        source = sourceOf(self.service)
        yield source.whenReady()
        yield waitFor(lambda: self.service.service.counters["source_entries:delivered"] == 1)
        yield waitFor(lambda: pendingCount(self.redis) == 0)

    @inlineCallbacks
    def test_clusterWide(self) -> None:
        """
        With C{--redis}, an entry reaches the session's tab on another
        process of the cluster.
        """
        self.redis = yield startRedis(self)
        url = self.redis.url.replace("redis://", "redis-stream://") + "?stream=out&group=gw"
        reader = serve(self, "--redis", self.redis.url, "--source", url)
        other = serve(self, "--redis", self.redis.url)
        yield sourceOf(reader).whenReady()
        self.service = other
        sid, tab = yield self.tab()
        # The other process has told Redis of the session.
        yield waitFor(lambda: _isMember(self.redis, sid), timeout=10)
        self.xadd("session", sid, "data", "across")
        self.assertEqual((yield tab.nextMessage(timeout=10)), "across")

    @inlineCallbacks
    def test_groupCreatedBeforeListening(self) -> None:
        """
        L{prepare} creates the group at once (blocking, as the daemon does
        before it says it listens); a group already there is left alone.
        """
        self.redis = yield startRedis(self)
        spec = parseStreamURL(self.redis.url.replace("redis://", "redis-stream://") + "?stream=s&group=g")
        self.assertTrue(spec.prepare())
        self.assertTrue(spec.prepare())
        groups = redisCall(self.redis, "XINFO", "GROUPS", "s")
        self.assertEqual(len(groups), 1)

    @inlineCallbacks
    def test_claimsPendingOfDeadConsumer(self) -> None:
        """
        An entry that another consumer read and never acknowledged (it died)
        is claimed after C{claim-idle} seconds, delivered and acknowledged.
        """
        self.redis = yield startRedis(self)
        sid = "c" * 40
        redisCall(self.redis, "XGROUP", "CREATE", "out", "gw", "$", "MKSTREAM")
        redisCall(self.redis, "XADD", "out", "*", "session", sid, "data", "orphan")
        read = redisCall(self.redis, "XREADGROUP", "GROUP", "gw", "ghost", "COUNT", "10", "STREAMS", "out", ">")
        self.assertEqual(len(read[0][1]), 1)
        self.assertEqual(pendingCount(self.redis), 1)
        url = self.redis.url.replace("redis://", "redis-stream://") + "?stream=out&group=gw&claim-idle=0.3"
        self.service = serve(self, "--source", url)
        _, tab = yield self.tab(sid)
        self.assertEqual((yield tab.nextMessage(timeout=10)), "orphan")
        yield waitFor(lambda: pendingCount(self.redis) == 0)

    @inlineCallbacks
    def test_redisDown(self) -> None:
        """
        While Redis is down the source retries; entries written once it is
        back are delivered.
        """
        yield self.start()
        sid, tab = yield self.tab()
        yield self.redis.stop()
        yield self.redis.start()
        # A fresh server (persistence off): the group is created again.
        yield waitFor(lambda: _hasGroup(self.redis), timeout=20)
        self.xadd("session", sid, "data", "back")
        self.assertEqual((yield tab.nextMessage(timeout=20)), "back")
        self.flushLoggedErrors()


def _isMember(redis: Any, sid: str) -> bool:
    return any(sid.encode() in redisCall(redis, "SMEMBERS", key) for key in redisCall(redis, "KEYS", "wsglue:0:node:*"))


def _hasGroup(redis: Any) -> bool:
    try:
        return len(redisCall(redis, "XINFO", "GROUPS", "out")) == 1
    except (RedisError, OSError):
        return False


__all__: List[str] = []
