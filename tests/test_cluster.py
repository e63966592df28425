"""
Tests for the cluster registry (C{--redis}): the envelope in memory, the
routing between nodes through a fake broker in memory, presence and
reconnection against a real private redis-server, and whole daemons (2
nodes, real clients) sharing one Redis.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Dict, List, Optional

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, cookieValue, freePort, spawnDaemon, waitFor
from tests.redis_server import startRedis
from wsglue.cluster.envelope import (
    NODE_ID_LENGTH,
    OP_BROADCAST,
    OP_CLOSE,
    OP_SEND,
    decode,
    encode,
    newNodeId,
)
from wsglue.cluster.link import RedisUnavailable, TxRedisLink, _SubscriberFactory
from wsglue.cluster.redisurl import BadRedisURL, RedisURL, parseRedisURL
from wsglue.cluster.registry import ClusterRegistry
from wsglue.levers import Levers
from wsglue.tap import Options

URL = RedisURL("127.0.0.1", 6379, 0)
SID_A = "a" * 40
SID_B = "b" * 40


def unframe(frame: bytes) -> Any:
    """
    The message in an unmasked server-to-client WebSocket frame.
    """
    opcode = frame[0] & 0x0F
    length = frame[1] & 0x7F
    start = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        start = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        start = 10
    payload = frame[start : start + length]
    return payload.decode("utf-8") if opcode == 1 else payload


class FakeConnection:
    """
    A connection that keeps what it is sent, and how it was closed.
    """

    def __init__(self) -> None:
        self.received: List[Any] = []
        self.closedWith: List[Any] = []

    def send(self, message: Any) -> bool:
        self.received.append(message)
        return True

    def sendPrepared(self, prepared: Any) -> bool:
        self.received.append(unframe(prepared.payloadHybi))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closedWith.append((code, reason))


class FakeBroker:
    """
    Redis pub/sub in memory: a published message reaches, at once, every
    link subscribed to its channel.  C{up} says whether Redis is reachable.
    """

    def __init__(self) -> None:
        self.links: List["FakeLink"] = []
        self.up = True


class FakeLink:
    """
    L{wsglue.cluster.link.IRedisLink} on a L{FakeBroker}.
    """

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.channels: set = set()
        self.published: List[Any] = []
        self.commands: List[Any] = []
        self.registry: Optional[ClusterRegistry] = None
        self.pending: Optional[Deferred] = None

    def start(self, registry: ClusterRegistry) -> None:
        self.registry = registry
        self.broker.links.append(self)
        registry.subscriberReady()

    def stop(self) -> Deferred:
        self.broker.links.remove(self)
        return defer.succeed(None)

    def available(self) -> bool:
        return self.broker.up

    def publish(self, channel: str, data: bytes) -> Deferred:
        self.published.append((channel, data))
        if self.pending is not None:
            return Deferred()  # Redis never answers
        reached = 0
        for link in list(self.broker.links):
            if channel in link.channels:
                reached += 1
                link.registry.received(channel.encode("utf-8"), data)
        return defer.succeed(reached)

    def execute(self, *args: Any) -> Deferred:
        self.commands.append(args)
        return defer.succeed(0)

    def subscribe(self, channels: List[str]) -> Optional[Deferred]:
        if not self.broker.up:
            return None
        self.channels.update(channels)
        return defer.succeed(None)

    def unsubscribe(self, channels: List[str]) -> None:
        self.channels.difference_update(channels)


def settle(*nodes: ClusterRegistry) -> None:
    """
    Run the reactor turn in which each node tells Redis of the sessions
    opened and closed since the last one.
    """
    for node in nodes:
        node.reactor.advance(0)


def fakeNodes(count: int, broker: Optional[FakeBroker] = None, **kw: Any) -> List[ClusterRegistry]:
    broker = broker or FakeBroker()
    nodes = []
    for _ in range(count):
        node = ClusterRegistry(URL, link=FakeLink(broker), reactor=Clock(), **kw)
        node.start()
        nodes.append(node)
    return nodes


class EnvelopeTests(SynchronousTestCase):
    """
    L{encode} and L{decode}: what one node publishes for the others.
    """

    def setUp(self) -> None:
        self.node = newNodeId()

    def test_nodeIdLength(self) -> None:
        """
        Node ids have the fixed length the envelope expects, and differ.
        """
        self.assertEqual(len(self.node), NODE_ID_LENGTH)
        self.assertNotEqual(self.node, newNodeId())

    def test_textRoundTrip(self) -> None:
        """
        A text message comes back as the same C{str}, with its origin.
        """
        envelope = decode(encode(OP_SEND, self.node, "héllo ☃"))
        self.assertEqual((envelope.op, envelope.origin, envelope.message), (OP_SEND, self.node, "héllo ☃"))

    def test_digitsStayText(self) -> None:
        """
        A text message made of digits stays a C{str} (Redis clients like to
        turn such replies into numbers).
        """
        self.assertEqual(decode(encode(OP_BROADCAST, self.node, "12345")).message, "12345")

    def test_binaryRoundTrip(self) -> None:
        """
        A binary message, even one that is not UTF-8, comes back as the same
        C{bytes}.
        """
        payload = bytes(range(256)) + b"\xff\xfe"
        self.assertEqual(decode(encode(OP_BROADCAST, self.node, payload)).message, payload)

    def test_emptyMessages(self) -> None:
        """
        Empty text and empty binary messages keep their type.
        """
        self.assertEqual(decode(encode(OP_SEND, self.node, "")).message, "")
        self.assertEqual(decode(encode(OP_SEND, self.node, b"")).message, b"")

    def test_closeRoundTrip(self) -> None:
        """
        A close carries its code and reason.
        """
        envelope = decode(encode(OP_CLOSE, self.node, None, 4001, "bye ☃"))
        self.assertEqual((envelope.op, envelope.code, envelope.reason), (OP_CLOSE, 4001, "bye ☃"))

    def test_malformedRejected(self) -> None:
        """
        Anything that is not an envelope is a C{ValueError}.
        """
        good = encode(OP_SEND, self.node, "x")
        for bad in [
            b"",
            b"junk",
            good[:10],
            b"W1x" + good[3:],
            good[:3] + b"?" + good[4:],
            encode(OP_CLOSE, self.node)[:-2],
        ]:
            self.assertRaises(ValueError, decode, bad)

    def test_badOriginRefused(self) -> None:
        """
        An origin that is not a node id cannot be encoded.
        """
        self.assertRaises(ValueError, encode, OP_SEND, "short", "x")

    def test_onlyStrOrBytes(self) -> None:
        """
        Only C{str} and C{bytes} can be sent.
        """
        self.assertRaises(TypeError, encode, OP_SEND, self.node, 42)


class RoutingTests(SynchronousTestCase):
    """
    Several L{ClusterRegistry} nodes on one fake broker.
    """

    def test_sendReachesOtherNode(self) -> None:
        """
        C{send} on node B reaches the connection of that session on node A;
        it returns the number of B's own connections reached (0).
        """
        a, b = fakeNodes(2)
        conn = FakeConnection()
        a.add(SID_A, conn)
        settle(a)
        self.assertEqual(b.send(SID_A, "hello"), 0)
        self.assertEqual(conn.received, ["hello"])

    def test_sendLocalNotEchoed(self) -> None:
        """
        C{send} on the node holding the connection delivers it once (not a
        second time when its own publication comes back) and returns 1.
        """
        (a,) = fakeNodes(1)
        conn = FakeConnection()
        a.add(SID_A, conn)
        self.assertEqual(a.send(SID_A, "hello"), 1)
        self.assertEqual(conn.received, ["hello"])
        self.assertEqual(len(a.link.published), 1)

    def test_tabsOnTwoNodes(self) -> None:
        """
        Two connections of one session on two nodes both get a send issued
        on a third node, and one issued on either of them, once each.
        """
        a, b, c = fakeNodes(3)
        tabA, tabB = FakeConnection(), FakeConnection()
        a.add(SID_A, tabA)
        b.add(SID_A, tabB)
        settle(a, b)
        c.send(SID_A, "one")
        a.send(SID_A, "two")
        b.send(SID_A, b"\x00three")
        self.assertEqual(tabA.received, ["one", "two", b"\x00three"])
        self.assertEqual(tabB.received, ["one", "two", b"\x00three"])

    def test_otherSessionsUntouched(self) -> None:
        """
        A send to one session reaches no connection of another session.
        """
        a, b = fakeNodes(2)
        other = FakeConnection()
        a.add(SID_B, other)
        b.send(SID_A, "hello")
        self.assertEqual(other.received, [])

    def test_broadcastOncePerConnection(self) -> None:
        """
        C{broadcast} on one node reaches every connection of every node
        exactly once; it returns the number of local connections reached.
        """
        nodes = fakeNodes(3)
        conns = []
        for i, node in enumerate(nodes):
            for j in range(2):
                conn = FakeConnection()
                node.add(f"{i}{j}".ljust(40, "0"), conn)
                conns.append(conn)
        self.assertEqual(nodes[1].broadcast("all"), 2)
        self.assertEqual([c.received for c in conns], [["all"]] * 6)

    def test_broadcastLocalStaysLocal(self) -> None:
        """
        C{broadcastLocal} (the demo broadcast) reaches this node's
        connections only and publishes nothing.
        """
        a, b = fakeNodes(2)
        here, there = FakeConnection(), FakeConnection()
        a.add(SID_A, here)
        b.add(SID_B, there)
        self.assertEqual(a.broadcastLocal("notify"), 1)
        self.assertEqual((here.received, there.received), (["notify"], []))
        self.assertEqual(a.link.published, [])

    def test_closeEverywhere(self) -> None:
        """
        C{close(sid)} closes the session's connections on every node, with
        the code and reason given.
        """
        a, b, c = fakeNodes(3)
        tabA, tabB = FakeConnection(), FakeConnection()
        a.add(SID_A, tabA)
        b.add(SID_A, tabB)
        settle(a, b)
        self.assertEqual(c.close(SID_A, 4001, "bye"), 0)
        self.assertEqual((tabA.closedWith, tabB.closedWith), ([(4001, "bye")], [(4001, "bye")]))

    def test_lastTabUnsubscribes(self) -> None:
        """
        When a node's last connection of a session closes, it leaves the
        session's channel; while one remains, it stays.
        """
        (a,) = fakeNodes(1)
        one, two = FakeConnection(), FakeConnection()
        a.add(SID_A, one)
        a.add(SID_A, two)
        settle(a)
        a.remove(SID_A, one)
        settle(a)
        self.assertIn(a.sessionChannel(SID_A), a.link.channels)
        a.remove(SID_A, two)
        settle(a)
        self.assertNotIn(a.sessionChannel(SID_A), a.link.channels)
        self.assertIn(a.allChannel, a.link.channels)

    def test_presenceFollowsSessions(self) -> None:
        """
        A node adds a session to its presence set when its first connection
        opens and removes it when its last closes.
        """
        (a,) = fakeNodes(1)
        a._presenceDirty = False
        conn = FakeConnection()
        a.add(SID_A, conn)
        settle(a)
        a.remove(SID_A, conn)
        settle(a)
        self.assertEqual(
            [c for c in a.link.commands if c[0] in ("SADD", "SREM")],
            [("SADD", a.nodeKey(), SID_A), ("SREM", a.nodeKey(), SID_A)],
        )

    def test_oneCommandPerTurn(self) -> None:
        """
        Sessions opened in one reactor turn are subscribed with one
        SUBSCRIBE and announced with one SADD; those closed in one turn
        leave with one UNSUBSCRIBE and one SREM.
        """
        (a,) = fakeNodes(1)
        a._presenceDirty = False
        subscribed: List[List[str]] = []
        unsubscribed: List[List[str]] = []
        subscribe, unsubscribe = a.link.subscribe, a.link.unsubscribe
        a.link.subscribe = lambda channels: subscribed.append(channels) or subscribe(channels)
        a.link.unsubscribe = lambda channels: unsubscribed.append(channels) or unsubscribe(channels)
        del a.link.commands[:]  # the first heartbeat's
        conns = {sid: FakeConnection() for sid in (SID_A, SID_B)}
        for sid, conn in conns.items():
            a.add(sid, conn)
        self.assertEqual(subscribed, [])
        settle(a)
        channels = [a.sessionChannel(SID_A), a.sessionChannel(SID_B)]
        self.assertEqual(subscribed, [channels])
        self.assertEqual(a.link.commands, [("SADD", a.nodeKey(), SID_A, SID_B)])
        del a.link.commands[:]
        for sid, conn in conns.items():
            a.remove(sid, conn)
        settle(a)
        self.assertEqual(unsubscribed, [channels])
        self.assertEqual(a.link.commands, [("SREM", a.nodeKey(), SID_A, SID_B)])

    def test_openAndCloseInOneTurn(self) -> None:
        """
        A session opened and closed again before the turn ends never
        reaches Redis; one closed and opened again stays subscribed and
        present, with no command at all.
        """
        (a,) = fakeNodes(1)
        a._presenceDirty = False
        del a.link.commands[:]  # the first heartbeat's
        conn = FakeConnection()
        a.add(SID_A, conn)
        a.remove(SID_A, conn)
        settle(a)
        self.assertEqual(a.link.commands, [])
        self.assertNotIn(a.sessionChannel(SID_A), a.link.channels)
        a.add(SID_A, conn)
        settle(a)
        del a.link.commands[:]
        a.remove(SID_A, conn)
        a.add(SID_A, conn)
        settle(a)
        self.assertEqual(a.link.commands, [])
        self.assertIn(a.sessionChannel(SID_A), a.link.channels)

    def test_subscriptionsConfirmedChannelByChannel(self) -> None:
        """
        The subscriber's SUBSCRIBE of several channels is confirmed once
        Redis confirmed each of them, and a confirmation of one command
        never stands in for the next (txredisapi's own subscribe fires on
        the first confirmation and gives the others to whatever waits).
        """
        url = parseRedisURL("redis://127.0.0.1:1/0")
        link = TxRedisLink(url, Clock())
        proto = _SubscriberFactory(link, url).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        first = proto.subscribeAll(["a", "b"])
        second = proto.subscribeAll(["c"])
        self.assertEqual(
            transport.value(),
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n",
        )
        proto.replyReceived([b"subscribe", b"a", 1])
        proto.replyReceived([b"subscribe", b"b", 2])
        self.assertNoResult(second)
        self.successResultOf(first)
        proto.replyReceived([b"subscribe", b"c", 3])
        self.successResultOf(second)
        third = proto.subscribeAll(["d"])
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(third, RedisUnavailable)

    def test_channelNamesCarryTheDatabase(self) -> None:
        """
        Pub/sub ignores the database number, so the channel names carry it:
        two clusters on two databases of one Redis stay apart.
        """
        node = ClusterRegistry(RedisURL("h", 6379, 3), link=FakeLink(FakeBroker()), reactor=Clock())
        self.assertEqual(node.allChannel, "wsglue:3:all")
        self.assertEqual(node.sessionChannel(SID_A), "wsglue:3:s:" + SID_A)


class FaultTests(SynchronousTestCase):
    """
    What a node does while Redis cannot be reached.
    """

    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self, text: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if text in e.get("log_format", "")]

    def test_localDeliveryGoesOn(self) -> None:
        """
        With Redis down, C{send} and C{broadcast} still reach this node's
        connections and say so.
        """
        broker = FakeBroker()
        (a,) = fakeNodes(1, broker)
        conn = FakeConnection()
        a.add(SID_A, conn)
        broker.up = False
        self.assertEqual(a.send(SID_A, "one"), 1)
        self.assertEqual(a.broadcast("two"), 1)
        self.assertEqual(conn.received, ["one", "two"])

    def test_heldWhileDownPublishedInOrder(self) -> None:
        """
        With Redis down, publications are held (counted in
        C{redis_publish_held}), not dropped; once the command connection is
        back they are published oldest first and reach the other node in
        the order they were sent.
        """
        broker = FakeBroker()
        a, b = fakeNodes(2, broker)
        conn = FakeConnection()
        b.add(SID_A, conn)
        settle(b)
        broker.up = False
        for i in range(100):
            a.send(SID_A, f"m{i}")
        self.assertEqual(a.counters["redis_publish_held"], 100)
        self.assertEqual(a.link.published, [])
        self.assertEqual(conn.received, [])
        broker.up = True
        a.commandsReady()
        self.assertEqual(conn.received, [f"m{i}" for i in range(100)])
        self.assertEqual(a.counters["redis_published"], 100)
        self.assertEqual(a.counters["redis_publish_dropped"], 0)
        self.assertEqual(a.counters["redis_publish_failed"], 0)

    def test_heldBeforeNewOnes(self) -> None:
        """
        A publication made once Redis is back goes after those held while
        it was down, even before the node heard that it is back.
        """
        broker = FakeBroker()
        a, b = fakeNodes(2, broker)
        conn = FakeConnection()
        b.add(SID_A, conn)
        settle(b)
        broker.up = False
        a.send(SID_A, "first")
        a.broadcast("second")
        broker.up = True
        a.send(SID_A, "third")
        self.assertEqual(conn.received, ["first", "second", "third"])

    def test_heldFlushedByHeartbeat(self) -> None:
        """
        Should the link not say that Redis is back, the next heartbeat
        publishes what was held.
        """
        broker = FakeBroker()
        a, b = fakeNodes(2, broker)
        conn = FakeConnection()
        b.add(SID_A, conn)
        settle(b)
        broker.up = False
        a.send(SID_A, "held")
        broker.up = True
        a.reactor.advance(a.heartbeat)
        self.assertEqual(conn.received, ["held"])

    def test_heldBoundedOldestDropped(self) -> None:
        """
        At most C{holdLimit} publications are held: past it the oldest is
        dropped, counted in C{redis_publish_dropped}, and the newest reach
        the other nodes once Redis is back.
        """
        broker = FakeBroker()
        a, b = fakeNodes(2, broker)
        a.holdLimit = 3
        conn = FakeConnection()
        b.add(SID_A, conn)
        settle(b)
        broker.up = False
        for i in range(5):
            a.send(SID_A, f"m{i}")
        self.assertEqual(a.counters["redis_publish_dropped"], 2)
        self.assertEqual(a.counters["redis_publish_held"], 5)
        broker.up = True
        a.commandsReady()
        self.assertEqual(conn.received, ["m2", "m3", "m4"])

    def test_holdLimit(self) -> None:
        """
        The bound is 10,000 publications, a constant.
        """
        (a,) = fakeNodes(1)
        self.assertEqual(a.holdLimit, 10_000)

    def test_oneWarningNotOnePerMessage(self) -> None:
        """
        Dropping held publications logs one warning per interval, not one
        each, naming Redis's URL.
        """
        broker = FakeBroker()
        (a,) = fakeNodes(1, broker)
        a.holdLimit = 1
        broker.up = False
        for _ in range(51):
            a.broadcast("x")
        self.assertEqual(a.counters["redis_publish_dropped"], 50)
        self.assertEqual(len(self.warnings("dropped the oldest")), 1)
        self.assertEqual(self.warnings("dropped the oldest")[0]["url"], str(URL))
        a.reactor.advance(11)
        a.broadcast("x")
        warned = self.warnings("dropped the oldest")
        self.assertEqual(len(warned), 2)
        self.assertEqual(warned[1]["suppressed"], 49)

    def test_slowRedisNothingDropped(self) -> None:
        """
        While Redis is connected, publications that it has not answered yet
        do not limit new ones: 5,000 in one turn are all handed to the link.
        """
        (a,) = fakeNodes(1)
        a.link.pending = Deferred()
        for _ in range(5000):
            a.broadcast("x")
        self.assertEqual(len(a.link.published), 5000)
        self.assertEqual(a.counters["redis_publish_failed"], 0)
        self.assertEqual(a.counters["redis_publish_dropped"], 0)
        self.assertEqual(a.counters["redis_publish_held"], 0)

    def test_unreachableWarnedOnce(self) -> None:
        """
        Failed attempts to connect to Redis give one warning per interval
        naming its URL and saying that local traffic goes on.
        """
        (a,) = fakeNodes(1)
        for _ in range(5):
            a.redisUnreachable("Connection refused")
        warned = self.warnings("is unreachable")
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["url"], str(URL))
        self.assertIn("local traffic goes on", warned[0]["log_format"])

    def test_malformedMessageIgnored(self) -> None:
        """
        A message on our channels that is not an envelope is counted and
        ignored.
        """
        (a,) = fakeNodes(1)
        conn = FakeConnection()
        a.add(SID_A, conn)
        a.received(a.sessionChannel(SID_A).encode(), b"junk")
        self.assertEqual(conn.received, [])
        self.assertEqual(a.counters["redis_bad_message"], 1)

    def test_deliveryErrorContained(self) -> None:
        """
        A connection that raises while a message from another node is
        delivered does not break the subscriber: the error is logged.
        """
        a, b = fakeNodes(2)

        class Broken(FakeConnection):
            def sendPrepared(self, prepared: Any) -> bool:
                raise RuntimeError("boom")

        a.add(SID_A, Broken())
        b.broadcast("x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_presenceRewrittenAfterOutage(self) -> None:
        """
        Sessions opened while Redis was down are written to the presence
        set in full at the first heartbeat after it is back.
        """
        broker = FakeBroker()
        (a,) = fakeNodes(1, broker)
        broker.up = False
        a.add(SID_A, FakeConnection())
        a.reactor.advance(a.heartbeat)
        broker.up = True
        del a.link.commands[:]
        a.reactor.advance(a.heartbeat)
        self.assertEqual(a.link.commands[:2], [("DEL", a.nodeKey()), ("SADD", a.nodeKey(), SID_A)])

    def test_presenceWaitsForSubscriptions(self) -> None:
        """
        After the subscriber connection comes back, the presence set is
        rewritten only once Redis has confirmed the subscriptions, so a
        node that another sees listing a session can already reach it.
        """
        (a,) = fakeNodes(1)
        a.add(SID_A, FakeConnection())
        a.subscriberLost()
        confirm: Deferred = Deferred()
        a.link.subscribe = lambda channels: confirm
        del a.link.commands[:]
        a.subscriberReady()
        a.reactor.advance(a.heartbeat)
        a.reactor.advance(a.heartbeat)
        self.assertNotIn(("SADD", a.nodeKey(), SID_A), a.link.commands)
        confirm.callback(None)
        self.assertIn(("SADD", a.nodeKey(), SID_A), a.link.commands)

    def test_questionsFailWhenDown(self) -> None:
        """
        C{sessionsEverywhere} fails with L{RedisUnavailable} when Redis
        cannot be reached; C{hasSession} of a local session is still True.
        """
        broker = FakeBroker()
        (a,) = fakeNodes(1, broker)
        a.add(SID_A, FakeConnection())
        broker.up = False
        self.failureResultOf(a.sessionsEverywhere(), RedisUnavailable)
        self.assertIs(self.successResultOf(a.hasSession(SID_A)), True)
        self.failureResultOf(a.hasSession(SID_B), RedisUnavailable)


class RedisURLTests(SynchronousTestCase):
    """
    L{parseRedisURL}.
    """

    def test_defaults(self) -> None:
        """
        Port 6379 and database 0 unless given.
        """
        self.assertEqual(parseRedisURL("redis://example.com"), RedisURL("example.com", 6379, 0))

    def test_passwordAndDatabase(self) -> None:
        """
        The password (percent-decoded) and the database number are taken.
        """
        url = parseRedisURL("redis://:p%40ss@10.0.0.1:6380/4")
        self.assertEqual((url.host, url.port, url.db, url.password, url.username), ("10.0.0.1", 6380, 4, "p@ss", None))

    def test_usernameAndTLS(self) -> None:
        """
        C{rediss://} is TLS; a user name (Redis 6 ACL) is taken.
        """
        url = parseRedisURL("rediss://app:secret@redis.example.com/1")
        self.assertEqual((url.tls, url.username, url.password, url.port), (True, "app", "secret", 6379))

    def test_strHidesPassword(self) -> None:
        """
        The URL as logged never shows the password.
        """
        self.assertNotIn("secret", str(parseRedisURL("redis://:secret@h:1/2")))

    def test_bad(self) -> None:
        """
        Other schemes, no host, a bad port or database are refused.
        """
        for bad in [
            "http://h",
            "h:6379",
            "redis://",
            "redis://h:x/0",
            "redis://h:0",
            "redis://h/db",
            "redis://h/0?x=1",
        ]:
            self.assertRaises(BadRedisURL, parseRedisURL, bad)


class OptionsTests(SynchronousTestCase):
    """
    C{--redis} and C{--workers}.
    """

    def test_workersRequireRedis(self) -> None:
        """
        C{--workers 2} without C{--redis} is refused with one clear message.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--workers", "2"])
        self.assertEqual(str(exc), "--workers 2 > 1 requires --redis")

    def test_workersAtLeastOne(self) -> None:
        """
        C{--workers 0} and non-numbers are refused.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--workers", "0"])
        self.assertIn("--workers must be a whole number from 1 to 64", str(exc))
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--workers", "two"])
        self.assertIn("--workers", str(exc))

    def test_badRedisURL(self) -> None:
        """
        A bad C{--redis} URL is refused, saying why.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--redis", "http://h/0"])
        self.assertIn("--redis 'http://h/0' is not a valid Redis URL", str(exc))

    def test_redisParsed(self) -> None:
        """
        A good C{--redis} URL is parsed once, for makeService.
        """
        o = Options()
        o.parseOptions(["--redis", "redis://127.0.0.1:7000/2", "--workers", "3"])
        self.assertEqual((o["redis-url"], o["workers"]), (RedisURL("127.0.0.1", 7000, 2), 3))

    def test_commandLineKept(self) -> None:
        """
        The command line is kept as given, for the workers to be started
        with.
        """
        argv = ["--redis", "redis://h/0", "--workers", "2", "--allowed-origin", "*"]
        o = Options()
        o.parseOptions(argv)
        self.assertEqual(o["argv"], argv)


# -- against a real redis-server ------------------------------------------------


class Recorder(FakeConnection):
    """
    A FakeConnection whose arrivals can be waited for.
    """

    def waitForCount(self, n: int, timeout: float = 10) -> Deferred:
        return waitFor(lambda: len(self.received) >= n, timeout=timeout)


@inlineCallbacks
def eventually(question: Any, expected: Any, timeout: float = 15, interval: float = 0.05) -> Any:
    """
    Ask C{question()} (a Deferred) until it fires with C{expected}.
    """
    answer = None
    for _ in range(int(timeout / interval)):
        try:
            answer = yield question()
        except RedisUnavailable:
            answer = RedisUnavailable
        if answer == expected:
            return answer
        yield deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"still {answer!r}, not {expected!r}, after {timeout}s")


def _resp(*words: str) -> bytes:
    """
    A Redis command in RESP.
    """
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _readUntil(sock: socket.socket, wanted: bytes, count: int, seconds: float = 5) -> bool:
    """
    Read C{sock} (blocking, for at most C{seconds}) until C{wanted} has
    been seen C{count} times; whether it was.
    """
    sock.settimeout(seconds)
    data = b""
    try:
        while data.count(wanted) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data.count(wanted) >= count


class RealRedisTests(TestCase):
    """
    Registries in this process, on a private redis-server.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)

    def node(self, **kw: Any) -> ClusterRegistry:
        kw.setdefault("heartbeat", 0.2)
        registry = ClusterRegistry(parseRedisURL(self.redis.url), reactor=reactor, **kw)
        registry.start()
        self.addCleanup(registry.stop)
        return registry

    @inlineCallbacks
    def test_messagesThroughRedis(self) -> Any:
        """
        Text, digits-only text and binary messages sent on one node reach
        the session's connection on another unchanged.
        """
        a, b = self.node(), self.node()
        conn = Recorder()
        a.add(SID_A, conn)
        yield eventually(lambda: b.hasSession(SID_A), True)
        b.send(SID_A, "héllo")
        b.send(SID_A, "007")
        b.send(SID_A, b"\x00\xff\x80")
        yield conn.waitForCount(3)
        self.assertEqual(conn.received, ["héllo", "007", b"\x00\xff\x80"])

    @inlineCallbacks
    def test_manyInOneTurn(self) -> Any:
        """
        3,000 sends and 3,000 broadcasts made in one reactor turn on one
        node all reach the connection on the other node, in order: while
        Redis answers, nothing is dropped.
        """
        a, b = self.node(), self.node()
        conn = Recorder()
        a.add(SID_A, conn)
        yield eventually(lambda: b.hasSession(SID_A), True)
        sent = [f"send {i}" for i in range(3000)]
        broadcast = [f"broadcast {i}" for i in range(3000)]
        for message in sent:
            b.send(SID_A, message)
        for message in broadcast:
            b.broadcast(message)
        yield conn.waitForCount(6000, timeout=30)
        self.assertEqual(conn.received, sent + broadcast)
        self.assertEqual(b.counters["redis_published"], 6000)
        for name in ("redis_publish_held", "redis_publish_dropped", "redis_publish_failed"):
            self.assertEqual(b.counters[name], 0, name)

    @inlineCallbacks
    def test_sessionsEverywhere(self) -> Any:
        """
        C{sessionsEverywhere} lists the sessions of every node; a session
        is listed while any node holds a connection of it, and is gone
        everywhere once the last one closes.
        """
        a, b = self.node(), self.node()
        tabA, tabB = Recorder(), Recorder()
        a.add(SID_A, tabA)
        b.add(SID_A, tabB)
        b.add(SID_B, Recorder())
        yield eventually(a.sessionsEverywhere, [SID_A, SID_B])
        a.remove(SID_A, tabA)
        self.assertEqual((yield b.sessionsEverywhere()), [SID_A, SID_B])
        b.remove(SID_A, tabB)
        yield eventually(a.sessionsEverywhere, [SID_B])
        self.assertIs((yield a.hasSession(SID_A)), False)

    @inlineCallbacks
    def test_deadNodeForgotten(self) -> Any:
        """
        The sessions of a node that stopped without a word (no heartbeat,
        no clean-up) are forgotten once its TTL runs out.
        """
        a, b = self.node(ttl=1), self.node()
        a.add(SID_A, Recorder())
        yield eventually(b.sessionsEverywhere, [SID_A])
        # Dies: its heartbeat and connections stop, nothing is withdrawn.
        a._beating.stop()
        yield a.link.stop()
        yield eventually(b.sessionsEverywhere, [], timeout=10)

    @inlineCallbacks
    def test_restartedRedis(self) -> Any:
        """
        Redis stopped: local delivery goes on and cross-node sends fail
        fast, counted.  Redis started again on the same port: the nodes
        reconnect and resubscribe by themselves, presence is rewritten,
        and cross-node sends arrive again.
        """
        a, b = self.node(), self.node()
        conn = Recorder()
        a.add(SID_A, conn)
        yield eventually(lambda: b.hasSession(SID_A), True)
        yield self.redis.stop()
        yield waitFor(lambda: not a.link.available() and not b.link.available())
        self.assertEqual(a.send(SID_A, "local"), 1)
        b.send(SID_A, "held")
        self.assertEqual(b.counters["redis_publish_held"], 1)
        self.assertEqual(b.counters["redis_publish_failed"], 0)
        yield self.redis.start()
        yield eventually(lambda: b.hasSession(SID_A), True, timeout=30)
        # Published as soon as b's command connection was back: a gets it
        # if it had subscribed again by then (at most once, as pub/sub).
        self.assertEqual(len(b._held), 0)
        self.assertEqual(b.counters["redis_published"], 1)
        b.send(SID_A, "back")
        yield waitFor(lambda: "back" in conn.received)
        self.assertIn(conn.received, (["local", "back"], ["local", "held", "back"]))

    @inlineCallbacks
    def test_publishedBeforeLocalDelivery(self) -> Any:
        """
        C{broadcast} and C{send} hand their PUBLISH to the kernel before
        they deliver to the node's own connections, so that the other
        nodes deliver meanwhile: a subscriber outside the reactor has the
        message by the time the first local connection is sent to.
        """
        a, b = self.node(), self.node()
        # The immediate-writes lever hands each PUBLISH to the kernel at once.
        Levers(True).apply(registry=a)
        a.add(SID_A, Recorder())
        yield eventually(lambda: b.hasSession(SID_A), True)
        url = parseRedisURL(self.redis.url)
        watcher = socket.create_connection((url.host, url.port), timeout=5)
        self.addCleanup(watcher.close)
        watcher.sendall(_resp("SUBSCRIBE", a.allChannel, a.sessionChannel(SID_A)))
        _readUntil(watcher, b"subscribe", 2)
        seen: List[bool] = []

        class Probe(FakeConnection):
            # Blocks the reactor: only the kernel and Redis can bring the
            # message now.
            def sendPrepared(self, prepared: Any) -> bool:
                message = unframe(prepared.payloadHybi)
                seen.append(_readUntil(watcher, message.encode(), 1))
                return FakeConnection.sendPrepared(self, prepared)

        probe = Probe()
        a.add(SID_A, probe)
        self.assertEqual(a.broadcast("everyone"), 2)
        self.assertEqual(a.send(SID_A, "only you"), 2)
        self.assertEqual(seen, [True, True])
        self.assertEqual(probe.received, ["everyone", "only you"])

    @inlineCallbacks
    def test_password(self) -> Any:
        """
        A Redis that requires a password is used with the password of the
        URL.
        """
        locked = yield startRedis(self, password="s3cret")
        url = parseRedisURL(locked.url)
        a = ClusterRegistry(url, reactor=reactor, heartbeat=0.2)
        b = ClusterRegistry(url, reactor=reactor, heartbeat=0.2)
        for node in (a, b):
            node.start()
            self.addCleanup(node.stop)
        conn = Recorder()
        a.add(SID_A, conn)
        yield eventually(lambda: b.hasSession(SID_A), True)
        b.send(SID_A, "hello")
        yield conn.waitForCount(1)
        self.assertEqual(conn.received, ["hello"])


class UnreachableTests(TestCase):
    """
    A registry whose Redis is not there at all.
    """

    timeout = 30

    @inlineCallbacks
    def test_warnedAndLocalGoesOn(self) -> Any:
        """
        With nothing listening at the URL, the node says (rate-limited)
        that Redis at that URL is unreachable and local traffic goes on;
        it keeps serving its own connections and holds what it publishes.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        url = parseRedisURL(f"redis://127.0.0.1:{freePort()}/0")
        node = ClusterRegistry(url, reactor=reactor, heartbeat=0.2)
        node.start()
        self.addCleanup(node.stop)

        def warned() -> List[Dict[str, Any]]:
            return [e for e in events if "is unreachable" in e.get("log_format", "")]

        yield waitFor(lambda: len(warned()) >= 1, timeout=10)
        # The first retries come within a second or two: still one line.
        yield waitFor(
            lambda: len([e for e in events if "Scheduling retry" in str(e.get("log_format", ""))]) >= 2,
            timeout=15,
        )
        self.assertEqual(len(warned()), 1)
        retries = [formatEvent(e) for e in events if "Scheduling retry" in str(e.get("log_format", ""))]
        self.assertIn(f"to connect Redis at {url} in", retries[0])
        event = warned()[0]
        self.assertEqual(event["url"], str(url))
        self.assertIn("local traffic goes on", event["log_format"])
        conn = Recorder()
        node.add(SID_A, conn)
        self.assertEqual(node.send(SID_A, "local"), 1)
        self.assertEqual(conn.received, ["local"])
        self.assertEqual(node.counters["redis_publish_held"], 1)


# -- whole daemons ----------------------------------------------------------------

HANDLER = "tests.cluster_handler:Commands"


class Node:
    """
    A wsglue daemon on a free port, on the test's Redis.
    """

    def __init__(self, daemon: Any, port: int) -> None:
        self.daemon = daemon
        self.port = port


@inlineCallbacks
def startNode(testCase: Any, redis: Any, *extra: str) -> Any:
    port = freePort()
    daemon = spawnDaemon(
        testCase,
        [
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--redis",
            redis.url,
            "--handler",
            HANDLER,
            "--broadcast-interval",
            "0",
            *extra,
        ],
    )
    yield daemon.waitForOutput("subscribed at")
    return Node(daemon, port)


@inlineCallbacks
def ask(client: Any, command: str) -> Any:
    """
    Send C{command} and return the next message (its answer).
    """
    client.send(command)
    answer = yield client.nextMessage(timeout=10)
    return answer


@inlineCallbacks
def askUntil(client: Any, command: str, expected: str, timeout: float = 15) -> Any:
    answer = None
    for _ in range(int(timeout / 0.05)):
        answer = yield ask(client, command)
        if answer == expected:
            return answer
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{command!r} still answers {answer!r}, not {expected!r}")


@inlineCallbacks
def reachable(sender: Any, sid: str, receiver: Any, timeout: float = 30) -> Any:
    """
    Send C{probe} to session C{sid} through C{sender}'s node until
    C{receiver} (a tab of C{sid} on another node) gets one: that node has
    subscribed to the session's channel.  A tab's node subscribes when it
    opens, but Redis confirms later; a send or close published before then
    is not delivered there (Redis pub/sub is at most once).
    """
    for _ in range(int(timeout / 0.5)):
        yield ask(sender, f"send {sid} probe")
        try:
            message = yield receiver.nextMessage(timeout=0.5)
        except defer.TimeoutError:
            continue
        if message == "probe":
            return
    raise AssertionError(f"no send to {sid} reached the other node within {timeout} s")


class DaemonTests(TestCase):
    """
    Two real daemons on one private Redis, with real WebSocket clients.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self) -> Any:
        self.redis = yield startRedis(self)
        self.a, self.b = yield defer.gatherResults([startNode(self, self.redis), startNode(self, self.redis)])

    @inlineCallbacks
    def client(self, node: Node, sid: Optional[str] = None) -> Any:
        headers = {"Cookie": f"CookieName={sid}"} if sid else {}
        client = yield connect(self, node.port, headers=headers)
        client.sid = sid or cookieValue(client.setCookie)
        return client

    @inlineCallbacks
    def test_sendFromOtherNode(self) -> Any:
        """
        A send issued on node B reaches the client of that session on node
        A, text and binary; B's answer counts its own connections (0).
        """
        onA = yield self.client(self.a)
        onB = yield self.client(self.b)
        yield askUntil(onB, f"has {onA.sid}", "has True")
        yield reachable(onB, onA.sid, onA)
        self.assertEqual((yield ask(onB, f"send {onA.sid} hello from B")), "sent 0")
        message = yield onA.nextMessage()
        while message == "probe":  # a late probe
            message = yield onA.nextMessage()
        self.assertEqual(message, "hello from B")
        self.assertEqual((yield ask(onB, f"sendbin {onA.sid} 00ff")), "sent 0")
        self.assertEqual((yield onA.nextMessage()), b"\x00\xff")

    @inlineCallbacks
    def test_broadcastOnceEach(self) -> Any:
        """
        A broadcast from node B reaches every client on A and B exactly once.
        """
        clients = []
        for node in (self.a, self.a, self.b, self.b):
            clients.append((yield self.client(node)))
        first = clients[0]
        for c in clients[1:]:
            yield askUntil(first, f"has {c.sid}", "has True")
        sender = clients[2]
        sender.send("broadcast hello")
        received: Dict[Any, List[Any]] = {c: [] for c in clients}
        for c in clients:
            received[c].append((yield c.nextMessage()))
        received[sender].append((yield sender.nextMessage()))  # the answer
        # A broadcast from A last: any duplicate of "hello" would come before it.
        marker = clients[0]
        marker.send("broadcast end")
        for c in clients:
            received[c].append((yield c.nextMessage()))
        received[marker].append((yield marker.nextMessage()))
        self.assertEqual(received[clients[1]], ["hello", "end"])
        self.assertEqual(received[clients[3]], ["hello", "end"])
        self.assertEqual(received[sender], ["hello", "broadcast 2", "end"])
        self.assertEqual(received[marker], ["hello", "end", "broadcast 2"])

    @inlineCallbacks
    def test_tabsOnTwoNodes(self) -> Any:
        """
        Two tabs of one session on different nodes both receive send(sid);
        once the last one closes, the session is gone everywhere.
        """
        tab1 = yield self.client(self.a)
        tab2 = yield self.client(self.b, tab1.sid)
        watcher = yield self.client(self.b)
        yield askUntil(watcher, "everywhere", "everywhere " + ",".join(sorted([tab1.sid, watcher.sid])))
        self.assertEqual((yield ask(watcher, f"send {tab1.sid} to both")), "sent 1")
        self.assertEqual((yield tab1.nextMessage()), "to both")
        self.assertEqual((yield tab2.nextMessage()), "to both")
        tab1.sendClose(1000)
        yield tab1.closed
        self.assertEqual((yield ask(watcher, f"has {tab1.sid}")), "has True")
        tab2.sendClose(1000)
        yield tab2.closed
        yield askUntil(watcher, "everywhere", "everywhere " + watcher.sid)
        self.assertEqual((yield ask(watcher, f"has {tab1.sid}")), "has False")

    @inlineCallbacks
    def test_closeEverywhere(self) -> Any:
        """
        close(sid) on one node closes that session's tabs on both nodes.
        """
        tab1 = yield self.client(self.a)
        tab2 = yield self.client(self.b, tab1.sid)
        other = yield self.client(self.a)
        yield reachable(other, tab1.sid, tab2)
        self.assertEqual((yield ask(other, f"close {tab1.sid}")), "closing 1")
        closes = yield defer.gatherResults([tab1.closed, tab2.closed])
        self.assertEqual(closes, [(4001, "closed by test")] * 2)
        self.assertEqual((yield ask(other, "ping")), "pong")

    @inlineCallbacks
    def test_killedNodeLeavesOtherServing(self) -> Any:
        """
        Killing one node (SIGKILL) leaves the other serving its clients,
        new ones, and broadcasts.
        """
        onA = yield self.client(self.a)
        onB = yield self.client(self.b)
        self.a.daemon.signal("KILL")
        yield self.a.daemon.ended
        yield onA.closed
        self.assertEqual((yield ask(onB, "ping")), "pong")
        fresh = yield self.client(self.b)
        self.assertEqual((yield ask(fresh, "broadcast still here")), "still here")
        self.assertEqual((yield fresh.nextMessage()), "broadcast 2")
        self.assertEqual((yield onB.nextMessage()), "still here")

    @inlineCallbacks
    def test_redisStoppedAndRestarted(self) -> Any:
        """
        Redis stopped mid-traffic: ping/pong and local broadcasts go on,
        cross-node sends are held (counted), no daemon dies.  Redis back on
        the same port: the daemons reconnect and resubscribe by themselves,
        publish what they held, and cross-node sends arrive again.
        """
        onA = yield self.client(self.a)
        onB = yield self.client(self.b)
        yield askUntil(onB, f"has {onA.sid}", "has True")
        yield self.redis.stop()
        yield self.a.daemon.waitForOutput("lost Redis")
        yield self.b.daemon.waitForOutput("lost Redis")
        self.assertEqual((yield ask(onA, "ping")), "pong")
        self.assertEqual((yield ask(onA, "broadcast local only")), "local only")
        self.assertEqual((yield onA.nextMessage()), "broadcast 1")
        self.assertEqual((yield ask(onB, f"send {onA.sid} held")), "sent 0")
        counters = json.loads((yield ask(onB, "counters")).split(" ", 1)[1])
        self.assertGreaterEqual(counters["redis_publish_held"], 1)
        yield self.redis.start()
        yield askUntil(onB, f"has {onA.sid}", "has True", timeout=30)
        self.assertEqual((yield ask(onB, f"send {onA.sid} back")), "sent 0")
        # The held message arrives first if A had subscribed again by the
        # time B published it (at most once, as Redis pub/sub).
        message = yield onA.nextMessage()
        if message == "held":
            message = yield onA.nextMessage()
        self.assertEqual(message, "back")
        self.assertFalse(self.a.daemon.ended.called or self.b.daemon.ended.called)


class DemoBroadcastTests(TestCase):
    """
    The demo broadcast with two nodes.
    """

    timeout = 60

    @inlineCallbacks
    def test_oncePerIntervalForTheCluster(self) -> Any:
        """
        With two nodes, one of them sends the demo broadcast for the whole
        cluster: clients on either node get the same one, one per interval,
        never both nodes' (with continuity off, each node sends its own to
        its own connections: see tests.test_cluster_streams).
        """
        redis = yield startRedis(self)
        a, b = yield defer.gatherResults(
            [
                startNode(self, redis, "--broadcast-interval", "0.2", "--broadcast-message", "notify-A"),
                startNode(self, redis, "--broadcast-interval", "0.2", "--broadcast-message", "notify-B"),
            ]
        )
        onA = yield connect(self, a.port)
        onB = yield connect(self, b.port)
        seenA, seenB = [], []
        for _ in range(5):
            seenA.append((yield onA.nextMessage()))
            seenB.append((yield onB.nextMessage()))
        self.assertEqual(len(set(seenA + seenB)), 1)

    @inlineCallbacks
    def test_onePerIntervalPerNodeWithoutContinuity(self) -> Any:
        """
        With continuity off (C{--history-size 0}), each client gets only
        its own node's demo broadcast, one per interval.
        """
        redis = yield startRedis(self)
        a, b = yield defer.gatherResults(
            [
                startNode(
                    self, redis, "--broadcast-interval", "0.2", "--broadcast-message", "notify-A", "--history-size", "0"
                ),
                startNode(
                    self, redis, "--broadcast-interval", "0.2", "--broadcast-message", "notify-B", "--history-size", "0"
                ),
            ]
        )
        onA = yield connect(self, a.port)
        onB = yield connect(self, b.port)
        seenA, seenB = [], []
        for _ in range(5):
            seenA.append((yield onA.nextMessage()))
            seenB.append((yield onB.nextMessage()))
        self.assertEqual(seenA, ["notify-A"] * 5)
        self.assertEqual(seenB, ["notify-B"] * 5)
