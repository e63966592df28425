"""
The cluster registry's link to Redis: L{IRedisLink}, what the registry
needs of Redis (a command connection and a subscriber connection), and
L{TxRedisLink}, the real one on txredisapi.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred

from wsglue.cluster.redisurl import RedisURL

if TYPE_CHECKING:
    from wsglue.cluster.registry import ClusterRegistry


class RedisUnavailable(Exception):
    """
    Redis cannot be reached right now; a cluster-wide question has no answer.
    """


# -- what the registry needs of Redis ----------------------------------------


class IRedisLink(Protocol):
    """
    The registry's view of Redis: one connection for commands, one for
    subscriptions.  L{TxRedisLink} is the real one; unit tests use a fake.
    """

    def start(self, registry: "ClusterRegistry") -> None:
        """
        Connect, and keep reconnecting; call C{registry.subscriberReady()}
        each time the subscriber connection is up, C{registry.commandsReady()}
        each time the command connection is, C{registry.redisUnreachable(why)}
        each time an attempt to connect fails, and C{registry.received
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


class TxRedisLink:
    """
    L{IRedisLink} on txredisapi: a command connection and a subscriber
    connection, each kept up by txredisapi's ClientService with exponential
    backoff (1 s, growing to at most 10 s).
    """

    # A command connection on which Redis has answered nothing for this
    # many seconds while commands wait is cut off (and made again).  The
    # clock restarts with every reply: under a burst (a mass close, a
    # broadcast storm) the last of thousands of commands may wait longer
    # than this behind the others while Redis is answering all along, and
    # must not cost the connection (txredisapi's own replyTimeout counts
    # from each command's sending, so it would).
    replyTimeout = 5
    # Called with the command connection's transport after each PUBLISH.
    # The registry publishes before it delivers to its own connections; on
    # Twisted's own schedule the command leaves at the end of the reactor
    # turn, after that loop.  The immediate-writes lever sets it to hand the
    # command to the kernel at once (wsglue.levers.fastwrite.sendNow).
    afterPublish: Optional[Callable[[Any], None]] = None

    def __init__(self, url: RedisURL, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor
        self._commands: Any = None
        self._subscribers: Any = None
        self._subscriber: Any = None
        self.registry: Optional[ClusterRegistry] = None

    def _endpoint(self) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.interfaces import IStreamClientEndpoint

        endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, self.url.host, self.url.port, timeout=5)
        if self.url.tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self.url.host), endpoint)
        return _ReportFailures(endpoint, self._connectFailed, f"Redis at {self.url}")

    def _connectFailed(self, reason: Any) -> None:
        if self.registry is None or self._commands is None or self._commands.stopped:
            return
        report = getattr(self.registry, "redisUnreachable", None)
        if report is not None:
            report(reason.getErrorMessage())

    def commandsUp(self) -> None:
        """
        A command connection joined the pool: tell the registry.
        """
        ready = getattr(self.registry, "commandsReady", None)
        if ready is not None:
            ready()

    def start(self, registry: ClusterRegistry) -> None:
        self.registry = registry
        url = self.url
        # charset=None and convertNumbers=False: replies stay bytes, so a
        # binary or digits-only message is never "converted".
        self._commands = _CommandFactory(self, url)
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
        PUBLISH, then L{afterPublish} on the connection's transport.
        """
        conn = self._connection()
        if conn is None:
            return defer.fail(RedisUnavailable("not connected"))
        d = conn.execute_command("PUBLISH", channel, data)
        if self.afterPublish is not None:
            self.afterPublish(conn.transport)
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


class _ReportFailures:
    """
    A client endpoint that reports each failed C{connect} to C{onFailure}
    (with its L{Failure}) and otherwise is C{endpoint}: txredisapi's
    ClientService retries with no word beyond Twisted's C{Scheduling retry}.
    """

    def __init__(self, endpoint: Any, onFailure: Callable[[Any], None], name: str) -> None:
        self.endpoint = endpoint
        self.onFailure = onFailure
        self.name = name

    def __repr__(self) -> str:
        # As ClientService names it: "Scheduling retry 1 to connect Redis at
        # redis://host:6379/0 in 1.1 seconds."
        return self.name

    def connect(self, factory: Any) -> Deferred:
        def failed(reason: Any) -> Any:
            from twisted.internet.defer import CancelledError

            if not reason.check(CancelledError):
                self.onFailure(reason)
            return reason

        return self.endpoint.connect(factory).addErrback(failed)


def _CommandFactory(link: TxRedisLink, url: RedisURL) -> Any:
    # Built in a function so that txredisapi is imported only with --redis.
    import txredisapi
    from twisted.internet.task import LoopingCall

    class CommandProtocol(txredisapi.RedisProtocol):
        """
        txredisapi's protocol with a stall watchdog instead of a timeout per
        command: once a second, if commands wait and no reply came for
        L{TxRedisLink.replyTimeout} seconds, the connection is aborted.  A
        check that runs late (this process was busy for seconds) restarts
        the count instead: timers run before the reactor reads the socket,
        so the replies may be there, unread.
        """

        _waiting = 0
        _progress = 0.0
        _lastCheck = 0.0
        _watchdog: Any = None

        def connectionMade(self) -> Any:
            clock = link.reactor
            self._progress = self._lastCheck = clock.seconds()
            self._watchdog = LoopingCall(self._check)
            self._watchdog.clock = clock
            self._watchdog.start(1.0, now=False)
            return txredisapi.RedisProtocol.connectionMade(self)

        def connectionLost(self, why: Any) -> Any:
            if self._watchdog is not None and self._watchdog.running:
                self._watchdog.stop()
            self._watchdog = None
            return txredisapi.RedisProtocol.connectionLost(self, why)

        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            if not self._waiting:
                self._progress = link.reactor.seconds()
            self._waiting += 1
            return txredisapi.RedisProtocol.execute_command(self, *args, **kwargs)

        def replyReceived(self, reply: Any) -> Any:
            if self._waiting:
                self._waiting -= 1
            self._progress = link.reactor.seconds()
            return txredisapi.RedisProtocol.replyReceived(self, reply)

        def _check(self) -> None:
            now = link.reactor.seconds()
            late, self._lastCheck = now - self._lastCheck > 2.5, now
            if late:
                # This process was busy (a long stretch of work, a burst of
                # closes): the replies may be waiting unread in the socket,
                # behind this timer.  Not Redis's silence: count afresh.
                self._progress = now
                return
            if self._waiting and now - self._progress > link.replyTimeout:
                self._waiting = 0
                if self.transport is not None:
                    self.transport.abortConnection()

    class CommandFactory(txredisapi.RedisFactory):
        """
        txredisapi's factory, telling the link when a command connection
        joins the pool (ready: authenticated, database selected).
        """

        protocol = CommandProtocol

        def addConnection(self, conn: Any) -> None:
            txredisapi.RedisFactory.addConnection(self, conn)
            if conn in self.pool:
                link.commandsUp()

    return CommandFactory(
        None,
        url.db,
        1,
        isLazy=True,
        charset=None,
        password=url.password,
        replyTimeout=None,
        convertNumbers=False,
        username=url.username,
    )


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
            assert link.registry is not None, "subscribed before start()"
            link.registry.received(channel, message)

    class SubscriberFactory(txredisapi.RedisFactory):
        protocol = Subscriber

        def buildProtocol(self, addr: Any) -> Any:
            p = txredisapi.RedisFactory.buildProtocol(self, addr)
            p.whenConnected().addCallback(link.subscriberUp)
            p.whenDisconnected().addCallback(link.subscriberDown)
            return p

    return SubscriberFactory(
        None,
        None,
        1,
        isLazy=True,
        charset=None,
        password=url.password,
        convertNumbers=False,
        username=url.username,
    )
