"""
The twistd entry point: L{Options} and L{makeService}, the one place that
wires the parts of the service together and turns the speed levers on.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from wsglue.cookies import SessionCookies
from wsglue.counters import Counters, timeBroadcasts
from wsglue.levers import Levers
from wsglue.limits import Limits
from wsglue.options import GlueOptions, defaultStaticPath, optionsFromEnvironment, parseEnvironment
from wsglue.origin import OriginPolicy
from wsglue.process.service import WebSocketService
from wsglue.protocol import GlueServerFactory
from wsglue.registry import SessionRegistry
from wsglue.streams import History
from wsglue.web.front import makeSite

_log = Logger()


class Options(GlueOptions):
    """
    The options of C{twistd wsglue}, which also decide, once for the
    process, whether it runs with the speed levers (L{Levers.choose}) and
    put in place those that must be before twistd builds the service: the
    reactor and the log observer.
    """

    def postOptions(self) -> None:
        try:
            levers = Levers.choose(self["no-levers"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        # Before anything imports the reactor (GlueOptions checks --port with
        # it): under twistd with no -r, wsglue's own.
        levers.installProcessLevers(getattr(self, "parent", None))
        self["levers"] = levers
        GlueOptions.postOptions(self)


class HandlerFailed(SystemExit):
    """
    The application handler could not be built.  A L{SystemExit}, so that
    twistd exits non-zero with this one line rather than a traceback.
    """


def buildHandler(options: Dict[str, Any], registry: SessionRegistry) -> Any:
    """
    Build the application handler, C{NAME(registry)}, once for the service.

    @raise HandlerFailed: if it raises; its traceback is logged.
    """
    try:
        return options["handler-factory"](registry)
    except Exception as e:
        _log.failure("building the handler {handler} failed", handler=options["handler"])
        raise HandlerFailed(
            f"wsglue: error: --handler {options['handler']}: building the handler failed: {type(e).__name__}: {e}"
        )


def configureContinuity(registry: SessionRegistry, options: Dict[str, Any], reactor: Any) -> None:
    """
    Give C{registry} its history (C{--history-size}, C{--history-bytes},
    C{--history-ttl}: continuity, off with size 0) and its presence grace.
    """
    history = History(
        options.get("history-size", 100),
        options.get("history-bytes", 262144),
        options.get("history-ttl", 120.0),
        clock=reactor,
    )
    registry.configure(history, options.get("presence-grace", 30.0), clock=reactor)


class RegistryService(Service):
    """
    Cancels the registry's timers (kept sessions, presence) when the
    service stops.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def startService(self) -> None:
        Service.startService(self)
        self.registry.startTimers()

    def stopService(self) -> None:
        Service.stopService(self)
        self.registry.stopTimers()


def makeService(options: Dict[str, Any], reactor: Any = None, bindNow: Optional[bool] = None) -> MultiService:
    """
    Build the wsglue service: the listening WebSocket/HTTP service and the
    demo broadcast timer, with the speed levers that C{options} chose.

    @param reactor: the reactor to run on; C{None} under twistd, which
        makes SIGTERM and SIGINT graceful stops and SIGHUP a logged no-op
        (L{wsglue.process.service.stopCleanlyOnSignals}).
    @param bindNow: install that signal handling and bind the port now,
        before twistd daemonizes (it does so after building the service):
        a port that cannot be bound is then one line on the terminal that
        started twistd (L{CannotListen}, exit status 1) instead of twistd's
        100-byte report through its status pipe.  By default, when twistd
        runs the C{wsglue} plugin (C{options} has twistd's options as its
        C{parent}); C{glue.tac} passes C{True}.
    """
    # Under twistd (no reactor given) SIGTERM and SIGINT are graceful stops.
    handleSignals = reactor is None
    if bindNow is None:
        bindNow = handleSignals and getattr(options, "parent", None) is not None
    if reactor is None:
        from twisted.internet import reactor
    levers: Levers = options.get("levers") or Levers.current()
    counters = Counters()

    workers = options.get("workers", 1)
    if workers > 1:
        # The parent of --workers N only binds the port and runs the
        # workers, each a whole wsglue on the adopted socket.
        from wsglue.process.workers import WorkerPool

        pool = WorkerPool(
            endpoints.serverFromString(reactor, options["port"]),
            options["port"],
            options["argv"],
            workers,
            reactor,
            handleSignals=handleSignals,
            api=apiService(options, None, counters, reactor, parent=True) if options.get("api") else None,
        )
        pool.setName("workers")
        top = MultiService()
        pool.setServiceParent(top)
        levers.apply(top=top, ownProcess=handleSignals)
        if bindNow:
            prepareSources(options)
            pool.bind()
        return top

    from wsglue.process.workers import watchParent, workerEndpoint

    adopted = workerEndpoint(reactor) if handleSignals else None
    if options.get("redis-url") is not None:
        from wsglue.cluster.registry import ClusterRegistry

        # The demo broadcast goes once per interval to every connection
        # whatever the number of processes and hosts (demoBroadcast).
        registry: SessionRegistry = ClusterRegistry(options["redis-url"], reactor=reactor, counters=counters)
    else:
        registry = SessionRegistry()
    # Before anything takes hold of its broadcast methods.
    timeBroadcasts(registry, counters)
    demoBroadcast: Any = registry.broadcast
    if hasattr(registry, "demoBroadcast"):
        demoBroadcast = functools.partial(registry.demoBroadcast, interval=options["broadcast-interval"])
    configureContinuity(registry, options, reactor)
    limits = Limits(
        maxConnections=options["max-connections"],
        maxConnectionsPerIp=options["max-connections-per-ip"],
        maxConnectionsPerSession=options["max-connections-per-session"],
        maxMessagesPerSecond=options["max-messages-per-second"],
        maxSendBuffer=options["max-send-buffer"],
        clock=reactor,
        counters=counters,
    )
    factory = GlueServerFactory(
        registry=registry,
        handler=buildHandler(options, registry),
        cookies=SessionCookies(options["cookie-name"], options.get("secret-keys", ())),
        limits=limits,
        origins=OriginPolicy(options["allowed-origin"]),
        verbose=bool(options["verbose"]),
        trustProxy=bool(options["trust-proxy"]),
        maxMessageSize=options["max-message-size"],
        pingInterval=options["ping-interval"],
        pingTimeout=options["ping-timeout"],
        handshakeTimeout=options["handshake-timeout"],
        reactor=reactor,
    )
    site = makeSite(
        options["static"],
        factory,
        # The handshake deadline is absolute and bites first; the idle
        # timeout is the backstop for kept-alive page connections.
        timeout=60,
        handshakeTimeout=options["handshake-timeout"],
        reactor=reactor,
    )

    top = MultiService()
    if options.get("redis-url") is not None:
        from wsglue.cluster.registry import ClusterRegistry, RedisService

        # Before the listener: services stop in reverse order, so Redis is
        # left only after every connection has closed.
        assert isinstance(registry, ClusterRegistry), "--redis builds a ClusterRegistry"
        RedisService(registry).setServiceParent(top)
    RegistryService(registry).setServiceParent(top)
    if adopted is not None:
        endpoint = adopted
        watchParent(reactor)
    else:
        endpoint = endpoints.serverFromString(reactor, options["port"])
    listener = WebSocketService(
        endpoint,
        options["port"],
        site,
        factory,
        reactor,
        handleSignals=handleSignals,
        announce=adopted is None,
    )
    listener.setName("websocket")
    listener.setServiceParent(top)
    if options["broadcast-interval"]:
        timer = TimerService(options["broadcast-interval"], demoBroadcast, options["broadcast-message"])
        timer.clock = reactor
        timer.setName("broadcast")
        timer.setServiceParent(top)
    levers.apply(
        factory=factory,
        site=site,
        listener=listener,
        registry=registry,
        top=top,
        ownProcess=handleSignals,
    )
    if options.get("api") is not None:
        api = apiService(options, registry, counters, reactor, adopt=handleSignals)
        api.setServiceParent(top)
    # After the listener: services stop in reverse order, so a source stops
    # reading before the connections close.
    addSources(top, options, registry, counters, reactor)
    top.factory = factory  # type: ignore[attr-defined]
    top.counters = counters  # type: ignore[attr-defined]
    top.levers = levers  # type: ignore[attr-defined]
    if bindNow:
        prepareSources(options)
        listener.bind()
        if options.get("api") is not None:
            top.getServiceNamed("api").bind()
    return top


def prepareSources(options: Dict[str, Any]) -> None:
    """
    Make each C{--source} ready to read (a Redis Stream's consumer group
    created), blocking, before the daemon says it listens.
    """
    for spec in options.get("sources", ()):
        spec.prepare()


def addSources(
    top: MultiService, options: Dict[str, Any], registry: SessionRegistry, counters: Counters, reactor: Any
) -> None:
    """
    Add a service for each C{--source}, delivering as the API does.
    """
    if not options.get("sources"):
        return
    from wsglue.api.delivery import deliveryFor

    delivery = deliveryFor(registry)
    for i, spec in enumerate(options["sources"]):
        source = spec.makeSource(delivery, counters, reactor, options["max-message-size"])
        source.setName(f"source-{i}")
        source.setServiceParent(top)


def apiService(
    options: Dict[str, Any],
    registry: Optional[SessionRegistry],
    counters: Counters,
    reactor: Any,
    adopt: bool = False,
    parent: bool = False,
) -> Any:
    """
    The HTTP API's listening service (C{--api}), named C{api}.

    @param adopt: in a worker of C{--workers N} (under twistd), serve the
        socket the parent bound, and share the counters with the other
        workers (L{wsglue.api.shared}).
    @param parent: for the parent of C{--workers N}, which only binds it.
    """
    from wsglue.api.service import ApiService

    if parent:
        return ApiService(endpoints.serverFromString(reactor, options["api"]), options["api"], None)
    assert registry is not None
    from wsglue.api.metrics import MetricsResource
    from wsglue.api.shared import SharedCounters
    from wsglue.api.site import makeApiSite
    from wsglue.process.workers import API_FAMILY_VARIABLE, API_FD_VARIABLE, METRICS_VARIABLE, workerEndpoint

    adopted = workerEndpoint(reactor, fdVariable=API_FD_VARIABLE, familyVariable=API_FAMILY_VARIABLE) if adopt else None
    folder = os.environ.get(METRICS_VARIABLE) if adopted is not None else None
    shared = SharedCounters(folder, counters, registry) if folder else None
    from wsglue.api.stats import statsOf

    others = shared.others if shared is not None else None
    metrics = MetricsResource(counters, registry, others)
    site = makeApiSite(
        registry,
        options["api-keys"],
        counters,
        options["max-message-size"],
        metrics,
        reactor,
        stats=lambda: statsOf(counters, registry, others),
    )
    endpoint = adopted if adopted is not None else endpoints.serverFromString(reactor, options["api"])
    service = ApiService(endpoint, options["api"], site, announce=adopted is None, shared=shared, reactor=reactor)
    service.setName("api")
    return service


__all__ = ["Options", "defaultStaticPath", "makeService", "optionsFromEnvironment", "parseEnvironment"]
