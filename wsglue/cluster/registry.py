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
  - Redis up: every PUBLISH is handed to txredisapi (and its transport) at
    once, however many one reactor turn makes; nothing is dropped, the
    transport's buffer is the backpressure.
  - Redis down: local delivery goes on; publications wait, in order, in a
    bounded queue (L{HOLD_LIMIT}) and are published once the command
    connection is back; past the limit the oldest is dropped (a counter and
    a rate-limited warning).  Presence is rewritten in full and every
    channel subscribed again once Redis is back; txredisapi's ClientService
    reconnects with exponential backoff, and each failed attempt is a
    rate-limited warning naming the URL.

Delivery across nodes is at most once, like Redis pub/sub itself: a message
held while Redis was down reaches only the nodes subscribed again by the
time it is published; one in flight when the connection broke, or sent to a
session whose subscription is still on its way, is not delivered to the
other nodes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.cluster.envelope import (
    OP_BROADCAST,
    OP_BROADCAST_STREAM,
    OP_CLOSE,
    OP_SEND,
    OP_SEND_STREAM,
    decode,
    encode,
    head,
    newNodeId,
)
from wsglue.cluster.link import IRedisLink, RedisUnavailable, TxRedisLink
from wsglue.cluster.redisurl import RedisURL
from wsglue.cluster.streams import (
    appendScript,
    endScript,
    gapOf,
    joinScript,
    leadScript,
    leaveScript,
    openScript,
    takeScript,
    text,
    touchScript,
)
from wsglue.continuity import streamFrame
from wsglue.counters import Counters, RateLimitedWarning
from wsglue.registry import IConnection, Message, SessionRegistry, prepare
from wsglue.streams import History, newEpoch

_log = Logger()

# The counters a ClusterRegistry keeps.
COUNTERS = (
    "redis_published",
    "redis_publish_held",
    "redis_publish_dropped",
    "redis_publish_failed",
    "redis_received",
    "redis_bad_message",
    "redis_presence_failed",
    "redis_connect_failed",
)

# The most sessions or channels in one Redis command.
_BATCH = 1000

# The most publications held while Redis is unreachable (about 10,000 times
# the size of a message, plus 200 bytes each): past it, the oldest is
# dropped.  Not an option: a bound on memory during an outage, not a knob.
HOLD_LIMIT = 10_000


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

    @ivar counters: C{redis_published} (handed to Redis),
        C{redis_publish_held} (kept while Redis was unreachable),
        C{redis_publish_dropped} (held ones dropped past L{holdLimit}),
        C{redis_publish_failed} (in flight when the connection broke),
        C{redis_received}, C{redis_bad_message}, C{redis_presence_failed}.
    @ivar holdLimit: the most publications held while Redis is unreachable
        (L{HOLD_LIMIT}).
    """

    holdLimit = HOLD_LIMIT

    def __init__(
        self,
        url: Optional[RedisURL],
        link: Optional[IRedisLink] = None,
        nodeId: Optional[str] = None,
        heartbeat: float = 5.0,
        ttl: Optional[float] = None,
        reactor: Any = None,
        counters: Optional[Counters] = None,
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
        db = url.db if url is not None else 0
        self.prefix = f"wsglue:{db}:"
        self.allChannel = self.prefix + "all"
        self._sessionPrefix = self.prefix + "s:"
        self.nodesKey = self.prefix + "nodes"
        self.counters = counters if counters is not None else Counters()
        self.counters.declare(COUNTERS)
        # Publications made while Redis was unreachable, oldest first.
        # A stream append held is (None, (sid or None, message)).
        self._held: Deque[Tuple[Optional[str], Any]] = deque()
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
        self._warn = RateLimitedWarning(reactor, 10.0, _log)
        # Continuity in Redis (see configure): the streams, the client ids.
        self.streamed = False
        # Sessions whose channel Redis confirmed we are subscribed to, and
        # the hellos waiting for it.
        self._confirmed: Dict[str, None] = {}
        self._subscribing: Dict[str, List[Deferred]] = {}
        # Sessions with a wsglue.v1 client answered here: their stream keys
        # are kept alive by the heartbeat while they are.
        self._streaming: Dict[str, None] = {}
        # Presence cluster-wide (see watchPresence).
        self._clusterStarted: Optional[Callable[[str], None]] = None
        self._clusterEnded: Optional[Callable[[str], None]] = None
        self._departures = 0
        self._graceCalls: Dict[str, Any] = {}
        self.onlineKey = self.prefix + "online"
        self.demoKey = self.prefix + "demo"

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

    def streamKeys(self, sid: Optional[str]) -> List[str]:
        """
        The Redis keys of the session stream of C{sid} (C{None}: the
        broadcast stream): its hash and its Redis Stream.
        """
        if sid is None:
            return [self.prefix + "bm", self.prefix + "bx"]
        return [self.prefix + "sm:" + sid, self.prefix + "sx:" + sid]

    def idsKey(self, sid: str, client: str) -> str:
        """
        The sorted set of the message ids that client C{client} of session
        C{sid} sent.
        """
        return f"{self.prefix}ids:{sid}:{client}"

    def configure(self, history: Optional[History] = None, presenceGrace: float = 30.0, clock: Any = None) -> None:
        """
        As L{SessionRegistry.configure}; with continuity on, the streams
        and the client ids live in Redis, shared by every process.
        """
        SessionRegistry.configure(self, history, presenceGrace, clock)
        self.streamed = self.history is not None
        if self.streamed:
            self.broadcastStream = None

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
                [self.link.execute("DEL", self.nodeKey()), self.link.execute("ZREM", self.nodesKey, self.nodeId)],
                consumeErrors=True,
            )
            d.addTimeout(2, self.reactor)
            d.addErrback(lambda f: None)
        d.addCallback(lambda _: self.link.stop())
        return d

    # -- the registry API ----------------------------------------------------

    def add(self, sid: str, conn: IConnection) -> bool:
        isNew = SessionRegistry.add(self, sid, conn)
        if isNew and self._presenceKept():
            self._joined(sid)
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
        if closed and self._presenceKept():
            self._left(sid)
        if closed:
            if self._streaming.pop(sid, None) is not None:
                self._touch(self.streamKeys(sid))
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
            batch = leaving[i : i + _BATCH]
            for sid in batch:
                self._confirmed.pop(sid, None)
                self._subscribing.pop(sid, None)
            self.link.unsubscribe([self.sessionChannel(sid) for sid in batch])
            self._presence("SREM", batch)
        for i in range(0, len(joining), _BATCH):
            batch = joining[i : i + _BATCH]
            subscribed = self.link.subscribe([self.sessionChannel(sid) for sid in batch])
            if subscribed is None:
                self._presence("SADD", batch)
            else:
                # Announce the sessions only once their channels are
                # subscribed: whoever sees one in Redis can then reach it.
                subscribed.addCallback(self._announce, batch)

    def _announce(self, _: Any, sids: List[str]) -> None:
        self._confirm(sids)
        present = [sid for sid in sids if sid in self]
        if present:
            self._presence("SADD", present)

    def send(self, sid: str, message: Message) -> int:
        """
        Send C{message} to every connection of session C{sid} in the cluster.

        @return: the number of connections of this process reached; the
            other nodes' connections are reached through Redis, later.
        """
        if self.streamed:
            self._append(sid, message)
            return self._sendPlain(sid, message)
        # Published first, so that the other nodes deliver while this one
        # does (see TxRedisLink.publish).
        self._publish(self.sessionChannel(sid), encode(OP_SEND, self.nodeId, message))
        return SessionRegistry.send(self, sid, message)

    def _sendPlain(self, sid: str, message: Message) -> int:
        """
        With the streams in Redis: send C{message} now to this process's
        plain connections of C{sid}; its C{wsglue.v1} ones get it with its
        offset once Redis numbered it (L{received}).

        @return: the connections of C{sid} here (reached now or soon).
        """
        conns = self._sessions.get(sid)
        if not conns:
            return 0
        prepared = prepare(message)
        for conn in list(conns):
            if getattr(conn, "continuity", None) is None:
                conn.sendPrepared(prepared)
        return len(conns)

    def _broadcastPlain(self, message: Message) -> int:
        """
        As L{_sendPlain}, for every session of this process.
        """
        prepared = prepare(message)
        for conns in list(self._sessions.values()):
            for conn in list(conns):
                if getattr(conn, "continuity", None) is None:
                    conn.sendPrepared(prepared)
        return self._count

    def broadcast(self, message: Message) -> int:
        """
        Send C{message} to every connection in the cluster, once each.

        @return: the number of connections of this process reached.
        """
        if self.streamed:
            self._append(None, message)
            return self._broadcastPlain(message)
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

    # -- counted cluster-wide (the HTTP API) --------------------------------

    def sendCounted(self, sid: str, message: Message) -> Deferred:
        """
        L{send}, but fire with C{(reached, offset, epoch)}: the offset and
        epoch the message got in the session's stream (C{None} without one),
        and how many it reached: this process's
        connections, plus one for each I{other} process whose subscription
        to the session's channel received it (Redis's reply to PUBLISH).

        A process subscribes to a session's channel while it holds a
        connection of that session, so each process counted holds at least
        one, except in the moment after its last one closed (before its
        unsubscription reaches Redis).  Never more than the connections
        reached otherwise; 0 when nothing was reached.
        """
        # This process's own subscription, if Redis has it, is in PUBLISH's
        # reply but delivers nothing (see received).
        subscribedHere = sid in self._leaving or (sid in self and sid not in self._joining)
        if self.streamed:
            d = self._append(sid, message)
            local = self._sendPlain(sid, message)
            return d.addCallback(lambda r: (local + max(0, r[2] - subscribedHere), r[0], r[1]))
        d = self._publishCounted(self.sessionChannel(sid), encode(OP_SEND, self.nodeId, message))
        local = SessionRegistry.send(self, sid, message)
        return d.addCallback(lambda n: (local + max(0, n - subscribedHere), None, None))

    def broadcastCounted(self, message: Message) -> Deferred:
        """
        L{broadcast}, but fire with C{(reached, offset, epoch)} as
        L{sendCounted} does, counting this process's connections reached plus
        one for each other process that received it.  Every running process
        subscribes to the broadcast channel, so a process that holds no
        connection at all is counted too: the number may exceed the
        connections reached by the number of idle processes.
        """
        subscribedHere = self._subscribed
        if self.streamed:
            d = self._append(None, message)
            local = self._broadcastPlain(message)
            return d.addCallback(lambda r: (local + max(0, r[2] - subscribedHere), r[0], r[1]))
        d = self._publishCounted(self.allChannel, encode(OP_BROADCAST, self.nodeId, message))
        local = self.broadcastLocal(message)
        return d.addCallback(lambda n: (local + max(0, n - subscribedHere), None, None))

    def closeCounted(self, sid: str, code: int = 1000, reason: str = "") -> Deferred:
        """
        L{close}, but fire with this process's connections asked to close
        plus one for each other process that received the request (as
        L{sendCounted} counts).
        """
        subscribedHere = sid in self._leaving or (sid in self and sid not in self._joining)
        d = self._publishCounted(self.sessionChannel(sid), encode(OP_CLOSE, self.nodeId, None, code, reason))
        local = SessionRegistry.close(self, sid, code, reason)
        return d.addCallback(lambda n: local + max(0, n - subscribedHere))

    def _publishCounted(self, channel: str, data: bytes) -> Deferred:
        """
        L{_publish}, firing with the number of subscribers Redis handed the
        message to; 0 when it was held (Redis unreachable) or failed.
        """
        if self._held:
            self.flushHeld()
        if self._held or not self.link.available():
            self._hold(channel, data)
            return defer.succeed(0)
        try:
            d = self.link.publish(channel, data)
        except Exception as e:
            self._publishFailed(str(e))
            return defer.succeed(0)
        self.counters["redis_published"] += 1

        def failed(f: Failure) -> int:
            self._publishFailed(f.getErrorMessage())
            return 0

        return d.addCallbacks(lambda n: int(n or 0), failed)

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

    # -- presence, cluster-wide ---------------------------------------------

    def watchPresence(self, started: Optional[Callable[[str], None]], ended: Optional[Callable[[str], None]]) -> None:
        """
        Call C{started(sid)} when a session opens its first connection
        anywhere in the cluster, and C{ended(sid)} once it has had none
        anywhere for the presence grace; each once per start and end, on
        one process (Redis counts the processes that hold each session).
        """
        self._clusterStarted = started
        self._clusterEnded = ended

    def _presenceKept(self) -> bool:
        """
        Whether presence is kept in Redis: with continuity on, or for a
        handler that watches it.
        """
        return self.streamed or self._clusterStarted is not None

    def _presenceKeys(self, sid: str) -> List[str]:
        return [self.prefix + "pc:" + sid, self.prefix + "pg:" + sid]

    def _presenceFailed(self, f: Failure) -> None:
        self.counters["redis_presence_failed"] += 1
        self._warn(
            "presence",
            "redis presence update failed: {why} ({suppressed} more since the last warning)",
            why=f.getErrorMessage(),
        )

    def _joined(self, sid: str) -> None:
        call = self._graceCalls.pop(sid, None)
        if call is not None and call.active():
            call.cancel()
        count, grace = self._presenceKeys(sid)
        d = joinScript(self.link, [count, grace, self.onlineKey], [sid])

        def opened(first: Any) -> None:
            if int(first) and self._clusterStarted is not None:
                self._clusterStarted(sid)

        d.addCallbacks(opened, self._presenceFailed)

    def _left(self, sid: str) -> None:
        self._departures += 1
        token = f"{self.nodeId}.{self._departures}"
        grace = max(0.0, self.presenceGrace)
        d = leaveScript(self.link, self._presenceKeys(sid), [token, int(grace * 1000) + 60_000])

        def last(gone: Any) -> None:
            if not int(gone):
                return
            if grace <= 0:
                self._graceOver(sid, token)
            elif not self._stopped:
                self._graceCalls[sid] = self.reactor.callLater(grace, self._graceOver, sid, token)

        d.addCallbacks(last, self._presenceFailed)

    def _graceOver(self, sid: str, token: str) -> None:
        self._graceCalls.pop(sid, None)
        d = endScript(self.link, [self._presenceKeys(sid)[1], self.onlineKey], [token, sid])

        def ended(yes: Any) -> None:
            if int(yes) and self._clusterEnded is not None:
                self._clusterEnded(sid)

        d.addCallbacks(ended, self._presenceFailed)

    def online(self, sid: str) -> Any:  # type: ignore[override]
        """
        Whether session C{sid} is present anywhere in the cluster (from
        its start to its end, see L{watchPresence}).

        @return: a Deferred firing with a bool.
        """
        if sid in self._sessions:
            return defer.succeed(True)
        d = self.link.execute("SISMEMBER", self.onlineKey, sid)
        return d.addCallback(lambda n: bool(int(n)))

    def onlineCount(self) -> Any:  # type: ignore[override]
        """
        How many sessions are present anywhere in the cluster.

        @return: a Deferred firing with an int.
        """
        return self.link.execute("SCARD", self.onlineKey).addCallback(int)

    def stopTimers(self) -> None:
        SessionRegistry.stopTimers(self)
        calls, self._graceCalls = self._graceCalls, {}
        for call in calls.values():
            if call.active():
                call.cancel()

    # -- the demo broadcast ---------------------------------------------------

    def demoBroadcast(self, message: Message, interval: float = 3.0) -> None:
        """
        The demo broadcast, once per interval for the whole cluster: with
        the streams in Redis, one process (the holder of a lock key, kept
        while it lives) sends it to everyone, so that the broadcast offsets
        stay +1; without, each process sends it to its own connections.
        """
        if not self.streamed:
            self.broadcastLocal(message)
            return
        if not self.link.available():
            return
        ms = int(max(2.5 * interval, 1.0) * 1000)
        d = leadScript(self.link, [self.demoKey], [self.nodeId, ms])

        def lead(mine: Any) -> None:
            if int(mine):
                self.broadcast(message)

        d.addCallbacks(lead, lambda f: None)

    # -- streams in Redis ------------------------------------------------------

    def _append(self, sid: Optional[str], message: Message) -> Deferred:
        """
        Number C{message} in the stream of session C{sid} (C{None}: the
        broadcast stream) in Redis, which publishes it with its offset to
        every process (this one included: its C{wsglue.v1} connections get
        it from there, in offset order); held while Redis is unreachable.

        @return: a Deferred firing with C{(offset, epoch, receivers)};
            C{(None, None, 0)} when held or failed.
        """
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"can only send str or bytes, not {type(message).__name__}")
        if self._held:
            self.flushHeld()
        if self._held or not self.link.available():
            self._hold(None, (sid, message))
            return defer.succeed((None, None, 0))
        return self._appendNow(sid, message)

    def _appendNow(self, sid: Optional[str], message: Message) -> Deferred:
        history = self.history
        assert history is not None
        if sid is None:
            channel, op, plain, expires = self.allChannel, OP_BROADCAST_STREAM, OP_BROADCAST, "0"
        else:
            channel, op, plain, expires = self.sessionChannel(sid), OP_SEND_STREAM, OP_SEND, "1"
        payload = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        args = [
            payload,
            "t" if isinstance(message, str) else "b",
            history.size,
            history.bytes,
            int(history.ttl * 1000),
            newEpoch(),
            channel,
            head(op, self.nodeId, message),
            head(plain, self.nodeId, message),
            expires,
            "1",
        ]
        try:
            d = appendScript(self.link, self.streamKeys(sid), args)
        except Exception as e:
            self._publishFailed(str(e))
            return defer.succeed((None, None, 0))
        self.counters["redis_published"] += 1

        def done(r: Any) -> Tuple[Optional[int], Optional[str], int]:
            return int(r[0]) or None, text(r[1]) or None, int(r[2])

        def failed(f: Failure) -> Tuple[None, None, int]:
            self._publishFailed(f.getErrorMessage())
            return None, None, 0

        return d.addCallbacks(done, failed)

    def openStreams(self, sid: str, resume: Optional[Tuple[Tuple[str, int], Tuple[str, int]]]) -> Deferred:
        """
        Answer a C{hello} of session C{sid} from Redis: once this process
        is subscribed to the session's channel (so every message numbered
        after the read reaches it), make both streams if missing and read
        the gaps after the client's positions.

        @return: a Deferred firing with C{(session position, broadcast
            position, gaps or None)}, or failing with L{RedisUnavailable}.
        """
        if not self.link.available():
            return defer.fail(RedisUnavailable(f"Redis at {self.url} is unreachable"))
        history = self.history
        assert history is not None
        d = self._whenSubscribed(sid)

        def read(_: Any) -> Deferred:
            if resume is None:
                positions: List[Any] = ["0", "", 0, "", 0]
            else:
                (se, so), (be, bo) = resume
                positions = ["1", se, so, be, bo]
            args = [newEpoch(), newEpoch(), int(history.ttl * 1000), history.size, history.bytes, *positions]
            return openScript(self.link, self.streamKeys(sid) + self.streamKeys(None), args)

        def answer(r: Any) -> Any:
            session = (text(r[0]), int(r[1]))
            broadcast = (text(r[2]), int(r[3]))
            gaps = (gapOf(r[5]), gapOf(r[6])) if int(r[4]) else None
            if sid in self._sessions:
                self._streaming[sid] = None
            return session, broadcast, gaps

        d.addCallback(read)
        d.addCallback(answer)
        d.addErrback(self._unavailable)
        return d

    def _whenSubscribed(self, sid: str, timeout: float = 5.0) -> Deferred:
        """
        Fire once Redis confirmed this process's subscriptions to the
        broadcast channel and to session C{sid}'s.
        """
        if self._subscribed and sid in self._confirmed:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._subscribing.setdefault(sid, []).append(d)
        d.addTimeout(timeout, self.reactor, _notSubscribed)
        return d

    def _confirm(self, sids: Iterable[str]) -> None:
        for sid in sids:
            if sid not in self._sessions:
                continue
            self._confirmed[sid] = None
            if self._subscribed:
                for d in self._subscribing.pop(sid, ()):
                    if not d.called:
                        d.callback(None)

    def takeClientId(self, sid: str, client: str, messageId: int) -> Deferred:
        """
        Note message C{messageId} of client C{client} of session C{sid} in
        Redis (the latest 1,000 per client, for the history ttl).

        @return: a Deferred firing with whether it is new; failing with
            L{RedisUnavailable}.
        """
        history = self.history
        assert history is not None
        if not self.link.available():
            return defer.fail(RedisUnavailable(f"Redis at {self.url} is unreachable"))
        d = takeScript(self.link, [self.idsKey(sid, client)], [messageId, int(history.ttl * 1000)])
        return d.addCallback(lambda added: bool(int(added)))

    def clientGone(self, sid: str, client: str) -> None:
        """
        A C{wsglue.v1} connection of client C{client} of session C{sid}
        closed: its ids and the session stream are kept for the history
        ttl from now.
        """
        self._touch([self.idsKey(sid, client)] + self.streamKeys(sid))

    def _touch(self, keys: List[str]) -> None:
        history = self.history
        if history is None or not keys or not self.link.available() or history.ttl <= 0:
            return
        self._tolerate(touchScript(self.link, keys, [int(history.ttl * 1000)]))

    def _deliverNumbered(self, sid: Optional[str], envelope: Any) -> None:
        """
        A message numbered in Redis: to this process's C{wsglue.v1}
        connections with its offset, and (unless this process sent it, and
        so delivered it to them already) to its plain ones.
        """
        own = envelope.origin == self.nodeId
        if sid is None:
            conns: List[Any] = [c for record in self._sessions.values() for c in record]
        else:
            conns = list(self._sessions.get(sid, ()))
        if not conns:
            return
        message = envelope.message
        kind = "b" if sid is None else "s"
        plain = framed = None
        for conn in conns:
            session = getattr(conn, "continuity", None)
            if session is None:
                if not own:
                    if plain is None:
                        plain = prepare(message)
                    conn.sendPrepared(plain)
            else:
                if framed is None:
                    framed = prepare(streamFrame(kind, envelope.offset, message))
                session.deliverNumbered(kind, envelope.epoch, envelope.offset, framed)

    # -- publishing ----------------------------------------------------------

    def _publish(self, channel: str, data: bytes) -> None:
        """
        PUBLISH C{data} on C{channel} now if Redis is reachable, after the
        publications held while it was not; otherwise hold it (L{_hold}).

        While the command connection is up nothing is dropped, however many
        publications one reactor turn makes: txredisapi writes each to the
        connection's transport, whose buffer holds what the kernel has not
        taken yet, and a Redis that stops answering is cut off after
        L{TxRedisLink.replyTimeout} seconds.
        """
        if self._held:
            self.flushHeld()
        if self._held or not self.link.available():
            self._hold(channel, data)
            return
        self._send(channel, data)

    def _send(self, channel: str, data: bytes) -> None:
        try:
            d = self.link.publish(channel, data)
        except Exception as e:
            self._publishFailed(str(e))
            return
        self.counters["redis_published"] += 1
        d.addErrback(lambda f: self._publishFailed(f.getErrorMessage()))

    def _hold(self, channel: Optional[str], data: Any) -> None:
        """
        Keep a publication made while Redis is unreachable, to be published
        in order once it is back (L{flushHeld}).  At most L{holdLimit} are
        kept: past it the I{oldest} is dropped, so that what reaches the
        other nodes after an outage is its latest traffic, counted in
        C{redis_publish_dropped} with a rate-limited warning.
        """
        if len(self._held) >= self.holdLimit:
            self._held.popleft()
            self.counters["redis_publish_dropped"] += 1
            self._warn(
                "dropped",
                "Redis at {url} is unreachable and {limit} messages already wait for it:"
                " dropped the oldest, only this process's connections got it"
                " ({suppressed} more since the last warning)",
                url=str(self.url),
                limit=self.holdLimit,
            )
        self._held.append((channel, data))
        self.counters["redis_publish_held"] += 1

    def flushHeld(self) -> None:
        """
        Publish, oldest first, what was held while Redis was unreachable,
        as long as the command connection is up.  Called when it comes back
        (L{commandsReady}), once the subscriptions are confirmed again, at
        each heartbeat and before each new publication.
        """
        held = self._held
        available = self.link.available
        while held and available():
            channel, data = held.popleft()
            if channel is None:
                self._appendNow(*data)
            else:
                self._send(channel, data)

    def commandsReady(self) -> None:
        """
        The command connection is (again) up: publish what was held.
        """
        if self._held:
            _log.info(
                "Redis at {url} is reachable again: publishing {n} held messages",
                url=str(self.url),
                n=len(self._held),
            )
        self.flushHeld()

    def redisUnreachable(self, why: str) -> None:
        """
        An attempt to connect to Redis failed (txredisapi tries again, with
        backoff): say so, at most once per warning interval.
        """
        self.counters["redis_connect_failed"] += 1
        self._warn(
            "unreachable",
            "Redis at {url} is unreachable ({why}); local traffic goes on,"
            " cross-process messages wait (at most {limit}), retrying"
            " ({suppressed} more since the last warning)",
            url=str(self.url),
            why=why,
            limit=self.holdLimit,
        )

    def _publishFailed(self, why: str) -> None:
        self.counters["redis_publish_failed"] += 1
        self._warn(
            "publish",
            "redis publish failed, only this process's connections were reached: {why} ({suppressed} more since the last warning)",
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
            for batch in (channels[i : i + _BATCH] for i in range(0, len(channels), _BATCH))
        ]
        d = defer.gatherResults(confirmations, consumeErrors=True)
        d.addCallbacks(self._resubscribed, lambda f: None, callbackArgs=(len(channels) - 1,))

    def _resubscribed(self, _: Any, sessions: int) -> None:
        _log.info(
            "cluster node {node} subscribed at {url}: {n} sessions",
            node=self.nodeId[:8],
            url=str(self.url),
            n=sessions,
        )
        # Whatever happened while we were away, rewrite presence in full, now
        # that every session we hold can be reached.
        self._subscribed = True
        self._presenceDirty = True
        self._confirm(self.sessions())
        self._beat()

    def subscriberLost(self) -> None:
        """
        The subscriber connection is gone; txredisapi reconnects it.
        """
        self._subscribed = False
        self._confirmed.clear()
        _log.warn(
            "cluster node {node} lost Redis at {url}; local traffic goes on, reconnecting",
            node=self.nodeId[:8],
            url=str(self.url),
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
            self._warn(
                "bad",
                "ignored a malformed message on {channel}: {why} ({suppressed} more since the last warning)",
                channel=channel,
                why=str(e),
            )
            return
        if envelope.op in (OP_SEND_STREAM, OP_BROADCAST_STREAM):
            try:
                if envelope.op == OP_BROADCAST_STREAM:
                    self._deliverNumbered(None, envelope)
                elif channel.startswith(self._sessionPrefix):
                    self._deliverNumbered(channel[len(self._sessionPrefix) :], envelope)
            except Exception:
                _log.failure("delivering a message from node {node} failed", node=envelope.origin[:8])
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
                sid = channel[len(self._sessionPrefix) :]
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
            self._warn(
                "presence",
                "redis presence update failed: {why} ({suppressed} more since the last warning)",
                why=f.getErrorMessage(),
            )

        return d.addErrback(failed)

    def _beat(self) -> Optional[Deferred]:
        if not self.link.available():
            self._presenceDirty = True
            return None
        if self._held:
            self.flushHeld()
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
                    ds.append(self.link.execute("SADD", key, *sids[i : i + 1000]))
                ds.append(self.link.execute("EXPIRE", key, ttl))
            else:
                ds = [self.link.execute("EXPIRE", key, ttl)]
                ds[0].addCallback(self._checkExpire)
            ds.extend(self._keepStreams())
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

    def _keepStreams(self) -> List[Deferred]:
        """
        Refresh the time to live of the session streams that this process
        has C{wsglue.v1} clients of: a session stream lives while the
        session has a connection, and for the history ttl after.
        """
        history = self.history
        if history is None or history.ttl <= 0 or not self._streaming:
            return []
        sids = list(self._streaming)
        ttl = int(history.ttl * 1000)
        return [
            touchScript(self.link, [k for sid in sids[i : i + 250] for k in self.streamKeys(sid)], [ttl])
            for i in range(0, len(sids), 250)
        ]

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


def _notSubscribed(result: Any, timeout: float) -> Any:
    raise RedisUnavailable(f"not subscribed within {timeout} seconds")


def _strings(values: Iterable[Any]) -> List[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in (values or [])]


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
