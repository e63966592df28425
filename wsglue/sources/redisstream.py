"""
C{--source redis-stream://[:password@]host:port/db?stream=NAME&group=GROUP}:
L{RedisStreamSource} reads a Redis Stream as a member of a consumer group,
delivers each entry (L{wsglue.sources.entries}) and acknowledges it after;
entries it cannot deliver go to C{NAME:dead} with a C{reason}.  Entries left
pending by a consumer that died are claimed after C{claimIdle} seconds.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wsglue.cluster.redisurl import BadRedisURL, RedisURL, parseRedisURL
from wsglue.counters import Counters, RateLimitedWarning
from wsglue.sources.entries import DeadEntry, fieldsOf, readEntry
from wsglue.sources.source import BadSourceURL, Source

_log = Logger()

# Seconds an entry stays pending with a consumer before another claims it.
CLAIM_IDLE = 30.0
# Entries read (and claimed) at a time, and how long a read waits for one.
BATCH = 100
BLOCK_SECONDS = 1.0
# Consumers with nothing pending and idle this long are removed from the
# group (processes that stopped; their names are never used again).
FORGET_IDLE = 3600.0


@dataclass(frozen=True)
class RedisStreamSpec:
    """
    A parsed C{redis-stream://} URL.
    """

    url: RedisURL
    stream: str
    group: str
    start: str = "$"
    claimIdle: float = CLAIM_IDLE
    text: str = ""

    def __str__(self) -> str:
        return f"{self.url}?stream={self.stream}&group={self.group}"

    def makeSource(
        self, delivery: Any, counters: Counters, reactor: Any, maxMessageSize: int = 0
    ) -> "RedisStreamSource":
        return RedisStreamSource(
            self, delivery, counters, reactor, claimIdle=self.claimIdle, maxMessageSize=maxMessageSize
        )

    def prepare(self, timeout: float = 3.0) -> bool:
        """
        Create the consumer group now, blocking (before the reactor runs):
        so that it exists when the daemon says it listens.  Return whether
        it could; if not, the source creates it once Redis answers.
        """
        try:
            createGroupNow(self, timeout)
        except (OSError, RedisError) as e:
            _log.warn("source {source}: cannot create its group yet: {why}", source=str(self), why=str(e))
            return False
        return True


def parseStreamURL(text: str) -> RedisStreamSpec:
    """
    Parse C{redis-stream://[:password@]host:port/db?stream=NAME&group=GROUP
    [&start=0][&claim-idle=SECONDS]}.

    @raise BadSourceURL: with a message fit for a user.
    """
    parts = urlsplit(text)
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise BadSourceURL("the query must be name=value pairs joined by &")
    params: Dict[str, str] = {}
    for name, value in query:
        if name in params:
            raise BadSourceURL(f"{name} is given twice")
        params[name] = value
    unknown = sorted(set(params) - {"stream", "group", "start", "claim-idle"})
    if unknown:
        raise BadSourceURL(f"unknown parameter {unknown[0]!r} (use stream, group, start, claim-idle)")
    try:
        url = parseRedisURL(urlunsplit(("redis", parts.netloc, parts.path, "", "")))
    except BadRedisURL as e:
        raise BadSourceURL(str(e))
    stream, group = params.get("stream", ""), params.get("group", "")
    if not stream:
        raise BadSourceURL("stream=NAME is required")
    if not group:
        raise BadSourceURL("group=GROUP is required")
    start = params.get("start", "$")
    if start not in ("0", "$"):
        raise BadSourceURL(f"start must be 0 (read what is there) or $ (only new entries), not {start!r}")
    claimIdle = CLAIM_IDLE
    if "claim-idle" in params:
        try:
            claimIdle = float(params["claim-idle"])
        except ValueError:
            claimIdle = -1
        if not 0 < claimIdle < 86400:
            raise BadSourceURL(f"claim-idle must be a number of seconds above 0, not {params['claim-idle']!r}")
    return RedisStreamSpec(url, stream, group, start, claimIdle, text)


# -- a blocking client, for creating the group before the reactor runs -------


class RedisError(Exception):
    """
    Redis answered a command with an error.
    """


def _command(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(reader: Any) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else reader.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_reply(reader) for _ in range(n)]
    raise OSError(f"unexpected reply from Redis: {line[:40]!r}")


def blockingCommands(url: RedisURL, commands: Sequence[Sequence[Any]], timeout: float = 3.0) -> List[Any]:
    """
    Run C{commands} on a new connection to C{url} and return their replies
    (an error reply is returned as its L{RedisError}, not raised).
    """
    with socket.create_connection((url.host, url.port), timeout=timeout) as s:
        reader = s.makefile("rb")
        setup: List[Sequence[Any]] = []
        if url.password:
            setup.append(("AUTH", url.username, url.password) if url.username else ("AUTH", url.password))
        if url.db:
            setup.append(("SELECT", url.db))
        s.sendall(b"".join(_command(*c) for c in [*setup, *commands]))
        for _ in setup:
            _reply(reader)
        replies: List[Any] = []
        for _ in commands:
            try:
                replies.append(_reply(reader))
            except RedisError as e:
                replies.append(e)
        return replies


def createGroupNow(spec: RedisStreamSpec, timeout: float = 3.0) -> None:
    """
    C{XGROUP CREATE stream group $|0 MKSTREAM}, blocking; a group that
    exists already is left as it is.
    """
    (reply,) = blockingCommands(
        spec.url, [("XGROUP", "CREATE", spec.stream, spec.group, spec.start, "MKSTREAM")], timeout
    )
    if isinstance(reply, RedisError) and not str(reply).startswith("BUSYGROUP"):
        raise reply


def consumerName() -> str:
    """
    A consumer name for this process, never used before: host, pid and a
    random part (a restarted process gets a new one).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# -- the source ----------------------------------------------------------------


class _Stopped(Exception):
    pass


class RedisStreamSource(Source):
    """
    Read C{spec.stream} as consumer C{consumer} of C{spec.group}.

    The loop: make sure the group exists; every C{claimIdle / 2} seconds
    claim what other consumers left pending longer than C{claimIdle}
    (C{XAUTOCLAIM}); read our own pending entries (after a failure) or new
    ones (C{XREADGROUP ... >}, waiting at most L{BLOCK_SECONDS}); deliver
    them in order, copy the bad ones to C{NAME:dead}; then C{XACK} them all.
    A failure (Redis down) is retried with backoff and a rate-limited
    warning; unacknowledged entries stay in Redis.
    """

    def __init__(
        self,
        spec: RedisStreamSpec,
        delivery: Any,
        counters: Counters,
        reactor: Any = None,
        consumer: Optional[str] = None,
        claimIdle: float = CLAIM_IDLE,
        block: float = BLOCK_SECONDS,
        batch: int = BATCH,
        maxMessageSize: int = 0,
    ) -> None:
        Source.__init__(self, delivery, counters)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.spec = spec
        self.stream = spec.stream
        self.deadStream = spec.stream + ":dead"
        self.group = spec.group
        self.consumer = consumer or consumerName()
        self.claimIdle = claimIdle
        self.block = block
        self.batch = batch
        self.maxMessageSize = maxMessageSize
        self._factory: Any = None
        self._loop: Optional[Deferred] = None
        self._waiting: Optional[Deferred] = None
        self._busy = False
        self._running = False
        self._groupKnown = False
        self._ownPending = True
        self._nextClaim = 0.0
        self._clusterWaits = 0
        self._warn = RateLimitedWarning(reactor, 10.0, _log)

    # -- life ------------------------------------------------------------------

    def startService(self) -> None:
        Source.startService(self)
        self._running = True
        self._factory = _factory(self)
        self._factory.startConnecting(self._endpoint())
        self._loop = self._run()
        self._loop.addErrback(lambda f: _log.failure("source {source} stopped reading", f, source=str(self.spec)))

    def stopService(self) -> Deferred:
        Source.stopService(self)
        self._running = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        loop = self._loop if self._loop is not None else defer.succeed(None)
        finished: Deferred = Deferred()

        def ended(result: Any) -> None:
            if not finished.called:
                finished.callback(None)

        loop.addBoth(ended)
        if self._busy:
            # Let the entries in hand be delivered and acknowledged first.
            finished.addTimeout(3, self.reactor)
            finished.addErrback(lambda f: None)
        else:
            finished.callback(None)

        def disconnect(_: Any) -> Any:
            factory, self._factory = self._factory, None
            if factory is None:
                return None
            d = factory.disconnect()
            d.addTimeout(3, self.reactor)
            return d.addErrback(lambda f: None)

        return finished.addCallback(disconnect)

    def _endpoint(self) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint

        from wsglue.cluster.link import _ReportFailures

        url = self.spec.url
        endpoint = HostnameEndpoint(self.reactor, url.host, url.port, timeout=5)
        return _ReportFailures(endpoint, self._unreachable, f"Redis at {url}")

    def _unreachable(self, reason: Any) -> None:
        if self._running:
            self._warn(
                "unreachable",
                "source {source}: cannot reach Redis: {why}; retrying ({suppressed} more since the last warning)",
                source=str(self.spec),
                why=reason.getErrorMessage(),
            )

    def connected(self) -> None:
        """
        A connection joined the pool: wake the loop if it waits for one.
        """
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    def _connection(self) -> Any:
        if self._factory is None:
            return None
        for conn in self._factory.pool:
            if conn.connected:
                return conn
        return None

    def _execute(self, *args: Any) -> Deferred:
        conn = self._connection()
        if conn is None:
            return defer.fail(ConnectionError("not connected to Redis"))
        d: Deferred = conn.execute_command(*args)
        return d

    def _sleep(self, seconds: float) -> Deferred:
        self._waiting = deferLater(self.reactor, seconds, lambda: None)
        return self._waiting

    # -- the loop --------------------------------------------------------------

    @defer.inlineCallbacks
    def _run(self) -> Any:
        failures = 0
        while self._running:
            try:
                if self._connection() is None:
                    self._waiting = Deferred()
                    yield self._waiting
                    continue
                yield self._step()
                failures = 0
            except defer.CancelledError:
                if not self._running:
                    return
            except Exception as e:
                if not self._running:
                    return
                failures += 1
                self._ownPending = True
                if "NOGROUP" in str(e):
                    self._groupKnown = False
                self._warn(
                    "failed",
                    "source {source}: {why}; retrying ({suppressed} more since the last warning)",
                    source=str(self.spec),
                    why=str(e) or type(e).__name__,
                )
                try:
                    yield self._sleep(min(0.25 * 2 ** (failures - 1), 10.0))
                except defer.CancelledError:
                    return

    def _clusterReachable(self) -> bool:
        """
        Whether the registry can reach the other processes: with C{--redis}
        an entry read while its link is down would reach this process's
        connections only, so none is read then.
        """
        link = getattr(getattr(self.delivery, "registry", None), "link", None)
        return link is None or bool(link.available())

    @defer.inlineCallbacks
    def _step(self) -> Any:
        if not self._clusterReachable():
            self._clusterWaits += 1
            # Quiet while the daemon starts (both links connect at once).
            if self._clusterWaits > 25:
                self._warn(
                    "cluster",
                    "source {source}: waiting for the --redis connection before reading"
                    " ({suppressed} more since the last warning)",
                    source=str(self.spec),
                )
            yield self._sleep(0.2)
            return
        self._clusterWaits = 0
        if not self._groupKnown:
            yield self._createGroup()
            self._groupKnown = True
            if not self._isReady:
                _log.info(
                    "source {source}: reading as consumer {consumer}", source=str(self.spec), consumer=self.consumer
                )
            self.ready()
        if self.reactor.seconds() >= self._nextClaim:
            yield self._claim()
            self._nextClaim = self.reactor.seconds() + self.claimIdle / 2
        if self._ownPending:
            entries = yield self._read("0", None)
            if not entries:
                self._ownPending = False
        else:
            entries = yield self._read(">", self.block)
        if entries:
            yield self._handle(entries)

    def _createGroup(self) -> Deferred:
        d = self._execute("XGROUP", "CREATE", self.stream, self.group, self.spec.start, "MKSTREAM")

        def exists(f: Any) -> None:
            if "BUSYGROUP" not in str(f.value):
                f.raiseException()

        return d.addErrback(exists)

    @defer.inlineCallbacks
    def _read(self, since: str, block: Optional[float]) -> Any:
        args: List[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.batch]
        if block is not None:
            args += ["BLOCK", int(block * 1000)]
        reply = yield self._execute(*args, "STREAMS", self.stream, since)
        if not reply:
            return []
        return reply[0][1] or []

    @defer.inlineCallbacks
    def _claim(self) -> Any:
        """
        Claim and deliver what other consumers left pending longer than
        C{claimIdle}, a batch at a time; forget consumers long gone.
        """
        cursor: Any = b"0-0"
        idle = int(self.claimIdle * 1000)
        while self._running:
            reply = yield self._execute(
                "XAUTOCLAIM", self.stream, self.group, self.consumer, idle, cursor, "COUNT", self.batch
            )
            cursor, entries = reply[0], reply[1]
            if entries:
                _log.info(
                    "source {source}: claimed {n} pending entries of a stopped consumer",
                    source=str(self.spec),
                    n=len(entries),
                )
                yield self._handle(entries)
            if cursor in (b"0-0", "0-0"):
                break
        yield self._forgetConsumers()

    @defer.inlineCallbacks
    def _forgetConsumers(self) -> Any:
        consumers = yield self._execute("XINFO", "CONSUMERS", self.stream, self.group)
        for info in consumers or []:
            fields = fieldsOf(info)
            name = fields.get(b"name")
            if name is None or name == self.consumer.encode("utf-8"):
                continue
            if int(fields.get(b"pending", 1)) == 0 and int(fields.get(b"idle", 0)) > FORGET_IDLE * 1000:
                yield self._execute("XGROUP", "DELCONSUMER", self.stream, self.group, name)

    @defer.inlineCallbacks
    def _handle(self, entries: Sequence[Any]) -> Any:
        """
        Deliver C{entries} in order (the bad ones to C{NAME:dead}), then
        acknowledge them all.
        """
        self._busy = True
        try:
            ids: List[Any] = []
            waiting: List[Deferred] = []
            delivered = dead = 0
            for entryId, flat in entries:
                ids.append(entryId)
                if flat is None:
                    continue  # deleted from the stream while pending
                fields = fieldsOf(flat)
                what = readEntry(fields, self.maxMessageSize)
                if isinstance(what, DeadEntry):
                    waiting.append(self._bury(entryId, flat, what.reason))
                    dead += 1
                    continue
                try:
                    if what.sid is None:
                        waiting.append(self.delivery.broadcast(what.message))
                    else:
                        waiting.append(self.delivery.send(what.sid, what.message))
                except Exception as e:
                    # Retrying would fail the same way, and hold back the
                    # entries behind it.
                    _log.failure(
                        "source {source}: delivering entry {entry} failed", source=str(self.spec), entry=entryId
                    )
                    waiting.append(self._bury(entryId, flat, f"delivery failed: {type(e).__name__}"))
                    dead += 1
                    continue
                delivered += 1
            if waiting:
                yield defer.gatherResults(waiting, consumeErrors=True)
            yield self._execute("XACK", self.stream, self.group, *ids)
            self.counters.add("source_entries:delivered", delivered)
            self.counters.add("source_entries:dead", dead)
        finally:
            self._busy = False

    def _bury(self, entryId: Any, flat: Sequence[Any], reason: str) -> Deferred:
        entry = entryId.decode("ascii", "replace") if isinstance(entryId, bytes) else str(entryId)
        self._warn(
            "dead",
            "source {source}: entry {entry} cannot be delivered ({reason}); copied to {dead}"
            " ({suppressed} more since the last warning)",
            source=str(self.spec),
            entry=entry,
            reason=reason,
            dead=self.deadStream,
        )
        return self._execute("XADD", self.deadStream, "*", "reason", reason, "entry", entryId, *flat)


def _factory(source: RedisStreamSource) -> Any:
    # Built in a function so that txredisapi is imported only with a source.
    import txredisapi

    class SourceFactory(txredisapi.RedisFactory):  # type: ignore[misc]
        def addConnection(self, conn: Any) -> None:
            txredisapi.RedisFactory.addConnection(self, conn)
            if conn in self.pool:
                source.connected()

    url = source.spec.url
    return SourceFactory(
        None,
        url.db,
        1,
        isLazy=True,
        charset=None,
        password=url.password,
        # A read waits up to BLOCK_SECONDS for an entry.
        replyTimeout=source.block + 10,
        convertNumbers=False,
        username=url.username,
    )


__all__ = ["RedisStreamSource", "RedisStreamSpec", "parseStreamURL"]
