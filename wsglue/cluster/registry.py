"""
The cluster-wide session registry: L{ClusterRegistry}, a L{SessionRegistry}
whose C{send}, C{broadcast} and C{close} also reach the connections that
other processes and hosts hold, through Redis publish/subscribe.

How it works:

  - Every process (a "node") has a random node id and holds its own
    connections exactly as L{SessionRegistry} does.
  - A node subscribes to C{wsglue:<db>:all} and, for each session it holds at
    least one connection of, to C{wsglue:<db>:s:<sid>}.  Redis pub/sub
    ignores the database number, so the channel names carry it.
  - C{send(sid, m)} publishes C{m} on the session's channel, handed to the
    kernel at once, then delivers to the local connections; C{broadcast(m)}
    publishes on the C{all} channel, then delivers locally; C{close(sid)}
    likewise.  The other nodes deliver while this one does.  A node ignores
    what it published itself (the envelope carries the node id), so every
    connection in the cluster gets a message exactly once.
  - Presence: each node keeps the set C{wsglue:<db>:node:<id>} of its session
    ids, with a TTL refreshed by a heartbeat, and its id in the sorted set
    C{wsglue:<db>:nodes} scored by when it expires.  A node that dies leaves
    nothing behind for longer than the TTL.  L{ClusterRegistry.
    sessionsEverywhere} and L{ClusterRegistry.hasSession} read them.
  - Redis down: local delivery goes on; publishing fails fast (a counter and
    one rate-limited warning, never a queue), presence is rewritten in full
    and every channel subscribed again once Redis is back; txredisapi's
    ClientService reconnects with exponential backoff.

Delivery across nodes is at most once, like Redis pub/sub itself: a message
published while Redis is down, or to a session whose subscription is still
on its way, is not delivered to the other nodes.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, NamedTuple, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.levers.fastwrite import sendNow
from wsglue.cluster.redisurl import RedisURL
from wsglue.registry import IConnection, Message, SessionRegistry

_log = Logger()

# -- the envelope of a published message -------------------------------------

MAGIC = b"W1"
OP_SEND = b"s"
OP_BROADCAST = b"b"
OP_CLOSE = b"c"
_OPS = (OP_SEND, OP_BROADCAST, OP_CLOSE)
KIND_TEXT = b"t"
KIND_BINARY = b"b"
KIND_NONE = b"-"
NODE_ID_LENGTH = 16
_HEADER = len(MAGIC) + 2 + NODE_ID_LENGTH


class Envelope(NamedTuple):
    """
    A decoded message from another node.
    """

    op: bytes
    origin: str
    message: Optional[Message] = None
    code: int = 1000
    reason: str = ""


def newNodeId() -> str:
    """
    A random id for this process, unique in the cluster.
    """
    return secrets.token_hex(NODE_ID_LENGTH // 2)


def encode(op: bytes, origin: str, message: Optional[Message] = None,
           code: int = 1000, reason: str = "") -> bytes:
    """
    Encode what a node publishes: C{MAGIC, op, kind, origin node id}, then
    the payload.  Text goes as UTF-8 and binary as is (Redis strings are
    binary safe), the kind byte telling them apart; a close carries its code
    on two bytes and the reason in UTF-8.
    """
    if op not in _OPS or len(origin) != NODE_ID_LENGTH:
        raise ValueError(f"bad op {op!r} or origin {origin!r}")
    head = MAGIC + op
    if op == OP_CLOSE:
        return head + KIND_NONE + origin.encode("ascii") + struct.pack("!H", code) + reason.encode("utf-8")
    if isinstance(message, str):
        return head + KIND_TEXT + origin.encode("ascii") + message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return head + KIND_BINARY + origin.encode("ascii") + bytes(message)
    raise TypeError(f"can only send str or bytes, not {type(message).__name__}")


def decode(data: bytes) -> Envelope:
    """
    The inverse of L{encode}.

    @raise ValueError: if C{data} is not an envelope.
    """
    if not isinstance(data, bytes) or len(data) < _HEADER or not data.startswith(MAGIC):
        raise ValueError("not a wsglue envelope")
    op = data[2:3]
    kind = data[3:4]
    try:
        origin = data[4:_HEADER].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("bad origin")
    body = data[_HEADER:]
    if op == OP_CLOSE:
        if len(body) < 2:
            raise ValueError("close without a code")
        (code,) = struct.unpack("!H", body[:2])
        return Envelope(op, origin, None, code, body[2:].decode("utf-8", "replace"))
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}")
    if kind == KIND_TEXT:
        return Envelope(op, origin, body.decode("utf-8"))
    if kind == KIND_BINARY:
        return Envelope(op, origin, body)
    raise ValueError(f"unknown kind {kind!r}")


# The most sessions or channels in one Redis command.
_BATCH = 1000


class RedisUnavailable(Exception):
    """
    Redis cannot be reached right now; a cluster-wide question has no answer.
    """


# -- what the registry needs of Redis ----------------------------------------


class IRedisLink:
    """
    The registry's view of Redis: one connection for commands, one for
    subscriptions.  L{TxRedisLink} is the real one; unit tests use a fake.
    """

    def start(self, registry: "ClusterRegistry") -> None:
        """
        Connect, and keep reconnecting; call C{registry.subscriberReady()}
        each time the subscriber connection is up and C{registry.received
        (channel, data)} for each message.
        """

    def stop(self) -> Deferred:
        """
        Disconnect for good.
        """

    def available(self) -> bool:
        """
        Whether the command connection is up right now.
        """

    def publish(self, channel: str, data: bytes) -> Deferred:
        """
        PUBLISH; fires with the number of subscribers that got it.
        """

    def execute(self, *args: Any) -> Deferred:
        """
        Any other command on the command connection.
        """

    def subscribe(self, channels: List[str]) -> Optional[Deferred]:
        """
        SUBSCRIBE, if the subscriber connection is up, returning a Deferred
        that fires once Redis confirmed it; otherwise None (the channels are
        subscribed when the connection comes up).
        """

    def unsubscribe(self, channels: List[str]) -> None:
        """
        UNSUBSCRIBE, if the subscriber connection is up.
        """


class _RateLimitedWarning:
    """
    A warning logged at most once per C{interval} seconds, saying how many
    times it happened in between.
    """

    def __init__(self, clock: Any, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: Optional[float] = None
        self._suppressed = 0

    def __call__(self, format: str, **fields: Any) -> None:
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        _log.warn(format + " ({suppressed} more since the last warning)",
                  suppressed=self._suppressed, **fields)
        self._suppressed = 0


class ClusterRegistry(SessionRegistry):
    """
    A L{SessionRegistry} spanning every process and host that uses the same
    Redis database.

    Local (synchronous, as in L{SessionRegistry}): C{sessions()},
    C{connections(sid)}, C{len(registry)}, C{sid in registry},
    C{connectionCount}, C{closeAll()}, L{broadcastLocal}.

    Cluster-wide: C{send}, C{broadcast} and C{close} reach every node; they
    return the number of I{local} connections reached (they never wait for
    Redis).  L{sessionsEverywhere} and L{hasSession} ask Redis and return
    Deferreds.

    @ivar counters: C{redis_published}, C{redis_publish_failed},
        C{redis_received}, C{redis_bad_message}, C{redis_presence_failed}.
    """

    def __init__(
        self,
        url: Optional[RedisURL],
        link: Optional[IRedisLink] = None,
        nodeId: Optional[str] = None,
        heartbeat: float = 5.0,
        ttl: Optional[float] = None,
        maxInFlight: int = 1000,
        reactor: Any = None,
    ) -> None:
        SessionRegistry.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.url = url
        self.link: IRedisLink = link if link is not None else TxRedisLink(url, reactor)
        self.nodeId = nodeId or newNodeId()
        self.heartbeat = heartbeat
        # Three missed heartbeats and a node's sessions are gone.
        self.ttl = ttl if ttl is not None else 3 * heartbeat
        self.maxInFlight = maxInFlight
        db = url.db if url is not None else 0
        self.prefix = f"wsglue:{db}:"
        self.allChannel = self.prefix + "all"
        self._sessionPrefix = self.prefix + "s:"
        self.nodesKey = self.prefix + "nodes"
        self.counters: Dict[str, int] = {
            "redis_published": 0,
            "redis_publish_failed": 0,
            "redis_received": 0,
            "redis_bad_message": 0,
            "redis_presence_failed": 0,
        }
        self._inFlight = 0
        # Presence must be written in full (DEL + SADD all) before it can be
        # kept up to date one session at a time.
        self._presenceDirty = True
        # Whether Redis confirmed our subscriptions on the current subscriber
        # connection.  Presence is written only while it is: whoever sees a
        # session in Redis must be able to reach it.
        self._subscribed = False
        self._beating: Optional[LoopingCall] = None
        # Sessions opened and closed since the last _flush, in order.
        self._joining: Dict[str, None] = {}
        self._leaving: Dict[str, None] = {}
        self._flushing: Any = None
        self._warnPublish = _RateLimitedWarning(reactor)
        self._warnPresence = _RateLimitedWarning(reactor)
        self._warnBad = _RateLimitedWarning(reactor)

    # -- names ---------------------------------------------------------------

    def sessionChannel(self, sid: str) -> str:
        """
        The channel on which the messages for session C{sid} travel.
        """
        return self._sessionPrefix + sid

    def nodeKey(self, nodeId: Optional[str] = None) -> str:
        """
        The Redis set of the sessions that node C{nodeId} holds.
        """
        return f"{self.prefix}node:{nodeId or self.nodeId}"

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        """
        Connect to Redis and start the presence heartbeat.
        """
        self.link.start(self)
        self._beating = LoopingCall(self._beat)
        self._beating.clock = self.reactor
        self._beating.start(self.heartbeat, now=False)

    def stop(self) -> Deferred:
        """
        Withdraw this node's presence (best effort, bounded) and disconnect.
        """
        if self._beating is not None and self._beating.running:
            self._beating.stop()
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        d: Deferred = defer.succeed(None)
        if self.link.available():
            d = defer.gatherResults(
                [self.link.execute("DEL", self.nodeKey()),
                 self.link.execute("ZREM", self.nodesKey, self.nodeId)],
                consumeErrors=True,
            )
            d.addTimeout(2, self.reactor)
            d.addErrback(lambda f: None)
        d.addCallback(lambda _: self.link.stop())
        return d

    # -- the registry API ----------------------------------------------------

    def add(self, sid: str, conn: IConnection) -> bool:
        isNew = SessionRegistry.add(self, sid, conn)
        if isNew:
            if sid in self._leaving:
                # Closed and opened again before Redis heard of it: its
                # channel and presence are still there.
                del self._leaving[sid]
            else:
                self._joining[sid] = None
                self._scheduleFlush()
        return isNew

    def remove(self, sid: str, conn: IConnection) -> bool:
        closed = SessionRegistry.remove(self, sid, conn)
        if closed:
            if sid in self._joining:
                del self._joining[sid]  # Redis never heard of it
            else:
                self._leaving[sid] = None
                self._scheduleFlush()
        return closed

    def _scheduleFlush(self) -> None:
        if self._flushing is None:
            self._flushing = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Tell Redis of the sessions opened and closed since the last reactor
        turn: one UNSUBSCRIBE and one SREM for those that closed, one
        SUBSCRIBE for those that opened, then (once Redis confirmed it) one
        SADD.  Handshakes arrive in bursts; a command per session cost each
        of them two Redis round trips and their Deferreds, timers and
        buffers, about 2 KiB of memory per session at 4,000 handshakes/s.
        """
        self._flushing = None
        leaving, self._leaving = list(self._leaving), {}
        joining, self._joining = list(self._joining), {}
        for i in range(0, len(leaving), _BATCH):
            batch = leaving[i:i + _BATCH]
            self.link.unsubscribe([self.sessionChannel(sid) for sid in batch])
            self._presence("SREM", batch)
        for i in range(0, len(joining), _BATCH):
            batch = joining[i:i + _BATCH]
            subscribed = self.link.subscribe([self.sessionChannel(sid) for sid in batch])
            if subscribed is None:
                self._presence("SADD", batch)
            else:
                # Announce the sessions only once their channels are
                # subscribed: whoever sees one in Redis can then reach it.
                subscribed.addCallback(self._announce, batch)

    def _announce(self, _: Any, sids: List[str]) -> None:
        present = [sid for sid in sids if sid in self]
        if present:
            self._presence("SADD", present)

    def send(self, sid: str, message: Message) -> int:
        """
        Send C{message} to every connection of session C{sid} in the cluster.

        @return: the number of connections of this process reached; the
            other nodes' connections are reached through Redis, later.
        """
        # Published first, so that the other nodes deliver while this one
        # does (see TxRedisLink.publish).
        self._publish(self.sessionChannel(sid), encode(OP_SEND, self.nodeId, message))
        return SessionRegistry.send(self, sid, message)

    def broadcast(self, message: Message) -> int:
        """
        Send C{message} to every connection in the cluster, once each.

        @return: the number of connections of this process reached.
        """
        # Published first: a broadcast reaches the other nodes' connections
        # while this node walks its own, instead of after it.
        self._publish(self.allChannel, encode(OP_BROADCAST, self.nodeId, message))
        return SessionRegistry.broadcast(self, message)

    def broadcastLocal(self, message: Message) -> int:
        """
        Send C{message} to the connections of this process only (the demo
        broadcast: each process sends it to its own connections, so that
        every connection gets exactly one per interval however many
        processes there are).
        """
        return SessionRegistry.broadcast(self, message)

    def close(self, sid: str, code: int = 1000, reason: str = "") -> int:
        """
        Close every connection of session C{sid} in the cluster.

        @return: the number of connections of this process asked to close.
        """
        self._publish(self.sessionChannel(sid), encode(OP_CLOSE, self.nodeId, None, code, reason))
        return SessionRegistry.close(self, sid, code, reason)

    def sessionsEverywhere(self) -> Deferred:
        """
        The ids of the sessions open anywhere in the cluster.

        @return: a Deferred firing with a sorted list, or failing with
            L{RedisUnavailable}.
        """
        d = self._liveNodes()

        def union(nodes: List[str]) -> Any:
            if not nodes:
                return []
            return self.link.execute("SUNION", *[self.nodeKey(n) for n in nodes])

        d.addCallback(union)
        d.addCallback(lambda sids: sorted(set(_strings(sids)) | set(self.sessions())))
        return d

    def hasSession(self, sid: str) -> Deferred:
        """
        Whether session C{sid} has a connection anywhere in the cluster.

        @return: a Deferred firing with a bool, or failing with
            L{RedisUnavailable}.
        """
        if sid in self:
            return defer.succeed(True)
        d = self._liveNodes()

        def ask(nodes: List[str]) -> Any:
            return defer.gatherResults(
                [self.link.execute("SISMEMBER", self.nodeKey(n), sid) for n in nodes],
                consumeErrors=True,
            )

        d.addCallback(ask)
        d.addCallback(lambda answers: any(int(a) for a in answers))
        d.addErrback(self._unavailable)
        return d

    # -- publishing ----------------------------------------------------------

    def _publish(self, channel: str, data: bytes) -> None:
        if self._inFlight >= self.maxInFlight:
            self._publishFailed("too many messages waiting for Redis")
            return
        if not self.link.available():
            self._publishFailed("Redis is unreachable")
            return
        try:
            d = self.link.publish(channel, data)
        except Exception as e:
            self._publishFailed(str(e))
            return
        self.counters["redis_published"] += 1
        self._inFlight += 1

        def done(result: Any) -> None:
            self._inFlight -= 1
            if isinstance(result, Failure):
                self._publishFailed(result.getErrorMessage())

        d.addBoth(done)

    def _publishFailed(self, why: str) -> None:
        self.counters["redis_publish_failed"] += 1
        self._warnPublish(
            "redis publish failed, only this process's connections were reached: {why}",
            why=why,
        )

    # -- receiving -----------------------------------------------------------

    def subscriberReady(self) -> None:
        """
        The subscriber connection is (again) up: subscribe to every channel
        this node needs.
        """
        channels = [self.allChannel] + [self.sessionChannel(s) for s in self.sessions()]
        # A thousand channels per command keeps each one small.
        confirmations = [
            defer.maybeDeferred(lambda batch=batch: self.link.subscribe(batch))
            for batch in (channels[i:i + _BATCH] for i in range(0, len(channels), _BATCH))
        ]
        d = defer.gatherResults(confirmations, consumeErrors=True)
        d.addCallbacks(self._resubscribed, lambda f: None, callbackArgs=(len(channels) - 1,))

    def _resubscribed(self, _: Any, sessions: int) -> None:
        _log.info(
            "cluster node {node} subscribed at {url}: {n} sessions",
            node=self.nodeId[:8], url=str(self.url), n=sessions,
        )
        # Whatever happened while we were away, rewrite presence in full, now
        # that every session we hold can be reached.
        self._subscribed = True
        self._presenceDirty = True
        self._beat()

    def subscriberLost(self) -> None:
        """
        The subscriber connection is gone; txredisapi reconnects it.
        """
        self._subscribed = False
        _log.warn(
            "cluster node {node} lost Redis at {url}; local traffic goes on, reconnecting",
            node=self.nodeId[:8], url=str(self.url),
        )

    def received(self, channel: Any, data: Any) -> None:
        """
        A message published by some node arrived on C{channel}.
        """
        self.counters["redis_received"] += 1
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            envelope = decode(data)
        except ValueError as e:
            self.counters["redis_bad_message"] += 1
            self._warnBad("ignored a malformed message on {channel}: {why}", channel=channel, why=str(e))
            return
        if envelope.origin == self.nodeId:
            # Delivered locally when it was sent.
            return
        # This runs inside txredisapi's reply parser: an exception escaping
        # here would break the subscriber connection for every session.
        try:
            if envelope.op == OP_BROADCAST:
                SessionRegistry.broadcast(self, envelope.message)
            elif channel.startswith(self._sessionPrefix):
                sid = channel[len(self._sessionPrefix):]
                if envelope.op == OP_SEND:
                    SessionRegistry.send(self, sid, envelope.message)
                elif envelope.op == OP_CLOSE:
                    SessionRegistry.close(self, sid, envelope.code, envelope.reason)
        except Exception:
            _log.failure("delivering a message from node {node} failed", node=envelope.origin[:8])

    # -- presence ------------------------------------------------------------

    def _presence(self, command: str, sids: List[str]) -> None:
        if self._presenceDirty:
            return  # the next heartbeat writes it all
        if not self.link.available() or not self._subscribed:
            self._presenceDirty = True
            return
        self._tolerate(self.link.execute(command, self.nodeKey(), *sids))

    def _tolerate(self, d: Deferred) -> Deferred:
        def failed(f: Failure) -> None:
            self._presenceDirty = True
            self.counters["redis_presence_failed"] += 1
            self._warnPresence("redis presence update failed: {why}", why=f.getErrorMessage())

        return d.addErrback(failed)

    def _beat(self) -> Optional[Deferred]:
        if not self.link.available():
            self._presenceDirty = True
            return None
        key = self.nodeKey()
        ttl = str(int(max(1, round(self.ttl))))
        try:
            if self._presenceDirty and not self._subscribed:
                # Written in full once the subscriptions are confirmed.
                ds = []
            elif self._presenceDirty:
                self._presenceDirty = False
                ds = [self.link.execute("DEL", key)]
                sids = self.sessions()
                for i in range(0, len(sids), 1000):
                    ds.append(self.link.execute("SADD", key, *sids[i:i + 1000]))
                ds.append(self.link.execute("EXPIRE", key, ttl))
            else:
                ds = [self.link.execute("EXPIRE", key, ttl)]
                ds[0].addCallback(self._checkExpire)
            now = self.reactor.seconds()
            ds.append(self.link.execute("ZADD", self.nodesKey, repr(now + self.ttl), self.nodeId))
            ds.append(self.link.execute("ZREMRANGEBYSCORE", self.nodesKey, "-inf", repr(now)))
        except Exception:
            self._presenceDirty = True
            return None
        d = defer.gatherResults(ds, consumeErrors=True)
        # Report the command's own failure, not gatherResults' wrapper.
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        self._tolerate(d)
        return None

    def _checkExpire(self, result: Any) -> None:
        # 0: our set is missing (Redis restarted, or it expired); if we hold
        # sessions, write it in full at the next heartbeat.
        if not int(result or 0) and len(self):
            self._presenceDirty = True

    def _liveNodes(self) -> Deferred:
        if not self.link.available():
            return defer.fail(RedisUnavailable(f"Redis at {self.url} is unreachable"))
        d = self.link.execute("ZRANGEBYSCORE", self.nodesKey, repr(self.reactor.seconds()), "+inf")
        d.addCallback(_strings)
        d.addErrback(self._unavailable)
        return d

    def _unavailable(self, f: Failure) -> Failure:
        if f.check(RedisUnavailable):
            return f
        return Failure(RedisUnavailable(f.getErrorMessage()))


def _strings(values: Iterable[Any]) -> List[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in (values or [])]


# -- the real link: txredisapi ------------------------------------------------


class TxRedisLink:
    """
    L{IRedisLink} on txredisapi: a command connection and a subscriber
    connection, each kept up by txredisapi's ClientService with exponential
    backoff (1 s, growing to at most 10 s).
    """

    replyTimeout = 5

    def __init__(self, url: RedisURL, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor
        self._commands: Any = None
        self._subscribers: Any = None
        self._subscriber: Any = None
        self.registry: Optional[ClusterRegistry] = None

    def _endpoint(self) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        endpoint = HostnameEndpoint(self.reactor, self.url.host, self.url.port, timeout=5)
        if self.url.tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self.url.host), endpoint)
        return endpoint

    def start(self, registry: ClusterRegistry) -> None:
        import txredisapi

        self.registry = registry
        url = self.url
        # charset=None and convertNumbers=False: replies stay bytes, so a
        # binary or digits-only message is never "converted".
        self._commands = txredisapi.RedisFactory(
            None, url.db, 1, isLazy=True, charset=None, password=url.password,
            replyTimeout=self.replyTimeout, convertNumbers=False, username=url.username,
        )
        self._commands.startConnecting(self._endpoint())
        self._subscribers = _SubscriberFactory(self, url)
        self._subscribers.startConnecting(self._endpoint())

    def stop(self) -> Deferred:
        ds = [f.disconnect() for f in (self._commands, self._subscribers) if f is not None]
        d = defer.gatherResults(ds, consumeErrors=True)
        d.addTimeout(3, self.reactor)
        d.addErrback(lambda f: None)
        return d

    def _connection(self) -> Any:
        if self._commands is None:
            return None
        for conn in self._commands.pool:
            if conn.connected:
                return conn
        return None

    def available(self) -> bool:
        return self._connection() is not None

    def publish(self, channel: str, data: bytes) -> Deferred:
        """
        PUBLISH, handed to the kernel at once (L{sendNow}): the registry
        publishes before it delivers to its own connections, and on
        Twisted's own schedule the command would leave only once that loop
        is over.
        """
        conn = self._connection()
        if conn is None:
            return defer.fail(RedisUnavailable("not connected"))
        d = conn.execute_command("PUBLISH", channel, data)
        sendNow(conn.transport)
        return d

    def execute(self, *args: Any) -> Deferred:
        conn = self._connection()
        if conn is None:
            return defer.fail(RedisUnavailable("not connected"))
        return conn.execute_command(*args)

    def subscribe(self, channels: List[str]) -> Optional[Deferred]:
        if self._subscriber is not None and self._subscriber.connected:
            d = self._subscriber.subscribeAll(channels)
            d.addErrback(lambda f: None)
            return d
        return None

    def unsubscribe(self, channels: List[str]) -> None:
        if self._subscriber is not None and self._subscriber.connected:
            self._subscriber.unsubscribeAll(channels)

    # called by the subscriber factory

    def subscriberUp(self, protocol: Any) -> None:
        self._subscriber = protocol
        if self.registry is not None:
            self.registry.subscriberReady()

    def subscriberDown(self, protocol: Any) -> None:
        if protocol is self._subscriber:
            self._subscriber = None
            if self.registry is not None and not self._subscribers.stopped:
                self.registry.subscriberLost()


# Redis's confirmations of SUBSCRIBE and UNSUBSCRIBE (charset=None: bytes).
_CONFIRMATIONS = (b"subscribe", b"unsubscribe")


def _SubscriberFactory(link: TxRedisLink, url: RedisURL) -> Any:
    # Built in a function so that txredisapi is imported only with --redis.
    import txredisapi

    class Subscriber(txredisapi.SubscriberProtocol):
        """
        txredisapi's subscriber, with SUBSCRIBE confirmed channel by channel.

        txredisapi answers a SUBSCRIBE of several channels when the first
        channel is confirmed, and hands the other confirmations to whatever
        command waits next: a later SUBSCRIBE could look confirmed before
        Redis had read it.  Here each command's Deferred fires once Redis
        confirmed every channel it names.
        """

        def connectionMade(self) -> Any:
            # channel (bytes) -> the pending commands that name it, oldest
            # first: [channels still unconfirmed, Deferred].
            self._confirming: Dict[bytes, Deque[List[Any]]] = {}
            return txredisapi.SubscriberProtocol.connectionMade(self)

        def subscribeAll(self, channels: List[str]) -> Deferred:
            done: Deferred = Deferred()
            pending = [len(channels), done]
            for channel in channels:
                self._confirming.setdefault(channel.encode("utf-8"), deque()).append(pending)
            self.transport.write(self._build_command("SUBSCRIBE", *channels))
            return done

        def unsubscribeAll(self, channels: List[str]) -> None:
            self.transport.write(self._build_command("UNSUBSCRIBE", *channels))

        def replyReceived(self, reply: Any) -> None:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] in _CONFIRMATIONS:
                if reply[0] == b"subscribe":
                    self._confirmed(reply[1])
                return
            txredisapi.SubscriberProtocol.replyReceived(self, reply)

        def _confirmed(self, channel: Any) -> None:
            if isinstance(channel, str):
                channel = channel.encode("utf-8")
            waiting = self._confirming.get(channel)
            if not waiting:
                return
            pending = waiting.popleft()
            if not waiting:
                del self._confirming[channel]
            pending[0] -= 1
            if pending[0] == 0:
                pending[1].callback(None)

        def connectionLost(self, why: Any) -> Any:
            confirming, self._confirming = self._confirming, {}
            failed = set()
            for waiting in confirming.values():
                for pending in waiting:
                    if id(pending) not in failed:
                        failed.add(id(pending))
                        pending[1].errback(RedisUnavailable("subscriber connection lost"))
            return txredisapi.SubscriberProtocol.connectionLost(self, why)

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            link.registry.received(channel, message)

    class SubscriberFactory(txredisapi.RedisFactory):
        protocol = Subscriber

        def buildProtocol(self, addr: Any) -> Any:
            p = txredisapi.RedisFactory.buildProtocol(self, addr)
            p.whenConnected().addCallback(link.subscriberUp)
            p.whenDisconnected().addCallback(link.subscriberDown)
            return p

    return SubscriberFactory(
        None, None, 1, isLazy=True, charset=None, password=url.password,
        convertNumbers=False, username=url.username,
    )


class RedisService(Service):
    """
    Connects the L{ClusterRegistry} to Redis while the daemon runs.  Added
    to the top service before the listener, so that it stops after every
    connection has closed (and left the presence sets).
    """

    def __init__(self, registry: ClusterRegistry) -> None:
        self.registry = registry

    def startService(self) -> None:
        Service.startService(self)
        self.registry.start()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return self.registry.stop()
