"""
The listening service: binds the endpoint, says where it listens, and on stop
closes every WebSocket with 1001 (going away) before the process exits.
Under twistd, SIGTERM and SIGINT are that stop from before the port is bound,
and SIGHUP is logged and ignored (L{stopCleanlyOnSignals}).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.protocol import GlueServerFactory

_log = Logger()


class CannotListen(SystemExit, Exception):
    """
    The endpoint could not be bound.  A L{SystemExit}, so that twistd exits
    non-zero with this one line rather than a traceback (under twistd the
    port is bound while the service is built, before twistd daemonizes: the
    line goes to the terminal that started it); and an L{Exception}, so that
    a daemonizing twistd that binds later (a service built otherwise)
    catches it and tells the process that started it, which would otherwise
    wait for ever.
    """


def describeAddress(port: IListeningPort, secure: bool, scheme: str = "ws") -> str:
    """
    The C{ws://} URL (or unix socket path) that a listening port serves,
    naming the address it is bound to: C{ws://0.0.0.0:9998} for every IPv4
    interface, C{ws://[::]:9998} for every IPv6 one, C{ws://127.0.0.1:9998}
    for one interface.  C{scheme} names the protocol (C{"http"} for the
    API's port); over TLS it gets an C{s}.
    """
    address: Any = port.getHost()  # an IPv4Address, IPv6Address or UNIXAddress
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"{scheme}+unix://{name}"
    if host == "":
        host = "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}{'s' if secure else ''}://{host}:{address.port}"


def stopCleanlyOnSignals(
    reactor: Any, doing: str = "shutting down", onStop: Optional[Callable[[], Any]] = None
) -> None:
    """
    From now on, make SIGTERM and SIGINT stop C{reactor} as a clean exit,
    and SIGHUP a logged no-op.

    Call it before the port is bound (L{WebSocketService.bind}), so that a
    signal at any moment after the port accepts leads to the normal stop:
    every WebSocket closed with 1001, exit status 0.  A signal that arrives
    before the reactor runs stops it as soon as it does.

    Twisted's own handlers, which the reactor installs as it starts
    running, would make twistd re-raise the signal once it has shut down,
    so that the process dies of SIGTERM: the reactor is given these as its
    C{sigTerm} and C{sigInt}, so that the ones it installs are wsglue's.

    SIGHUP (a closed terminal, a C{kill -HUP} meant to reload) would kill
    the process at once, pid file left behind, connections dropped: it is
    logged (C{received SIGHUP, ignored}) and ignored.

    @param onStop: called (in the signal handler) when a stop is asked for,
        before the reactor stops: the parent of C{--workers} starts no more
        workers from then on.
    """

    def stopReactor(name: str) -> None:
        _log.info("received {name}, {doing}", name=name, doing=doing)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping

    def onSignal(signum: int, frame: Any = None) -> None:
        if onStop is not None:
            onStop()
        # Logged and acted on in the reactor's thread, not inside whatever
        # the signal interrupted; before the reactor runs, once it does.
        reactor.callFromThread(stopReactor, signal.Signals(signum).name)

    def onHangup(signum: int, frame: Any = None) -> None:
        reactor.callFromThread(_log.info, "received SIGHUP, ignored")

    def install() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, onSignal)
        signal.signal(signal.SIGHUP, onHangup)

    install()
    # ReactorBase installs self.sigTerm and self.sigInt as it starts running.
    reactor.sigTerm = onSignal
    reactor.sigInt = onSignal
    # And should a reactor install others, ours again once it runs.
    reactor.callWhenRunning(install)


class WebSocketService(Service):
    """
    Listen on C{endpoint} with C{site}; on stop, stop listening and close the
    WebSockets of C{factory} with 1001, waiting at most C{drainTimeout}
    seconds for the peers to answer.
    """

    port: Optional[IListeningPort] = None
    _signalsHandled = False

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        site: Any,
        factory: GlueServerFactory,
        reactor: Any,
        drainTimeout: float = 3.0,
        handleSignals: bool = False,
        announce: bool = True,
    ) -> None:
        self.endpoint = endpoint
        # A worker of --workers N does not announce: its parent said it once.
        self.announce = announce
        self.description = description
        self.site = site
        self.factory = factory
        self.reactor = reactor
        self.drainTimeout = drainTimeout
        self.handleSignals = handleSignals
        # Called with the listening port once it is bound (the immediate
        # writes lever switches its transports).
        self.onListening: List[Callable[[IListeningPort], Any]] = []

    def bind(self) -> None:
        """
        Install the signal handling (with C{handleSignals}), then bind the
        endpoint, unless it is bound already.

        Called by L{privilegedStartService}: before privileges are shed
        (ports below 1024) and before the reactor runs, so a port that
        cannot be bound ends start-up at once.  Under twistd,
        L{wsglue.tap.makeService} calls it earlier still, before twistd
        daemonizes, so that the error is said on the terminal that started
        it.

        @raise CannotListen: if the endpoint cannot be bound.
        """
        if self.port is not None:
            return
        if self.handleSignals and not self._signalsHandled:
            # Before the port accepts: a SIGTERM from then on is a clean stop.
            stopCleanlyOnSignals(self.reactor)
            self._signalsHandled = True
        results: list = []
        self.endpoint.listen(self.site).addBoth(results.append)
        if not results:
            raise CannotListen(f"wsglue: listening on {self.description} did not complete")
        result = results[0]
        if isinstance(result, Failure):
            raise CannotListen(f"wsglue: cannot listen on {self.description}: {result.getErrorMessage()}")
        self.port = result
        for hook in self.onListening:
            hook(result)

    def privilegedStartService(self) -> None:
        self.bind()
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.bind()
        assert self.port is not None, "bind() sets it or raises"
        Service.startService(self)
        secure = self.description.startswith(("ssl:", "tls:"))
        if self.announce:
            _log.info(
                "started websocket server at {url}",
                url=describeAddress(self.port, secure),
            )
        else:
            _log.info("accepting connections at {url}", url=describeAddress(self.port, secure))

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        closing = self.factory.registry.closeAll(1001, "server shutting down")
        if closing:
            _log.info(
                "closing {n} {connections} (1001)",
                n=closing,
                connections="connection" if closing == 1 else "connections",
            )
            d: Deferred = self.factory.whenEmpty()
            d.addTimeout(self.drainTimeout, self.reactor)
            try:
                yield d
            except TimeoutError:
                _log.warn(
                    "{n} connections did not close in time",
                    n=self.factory.registry.connectionCount,
                )
                yield self._cutOff()

    @inlineCallbacks
    def _cutOff(self) -> Any:
        """
        Abort the connections that did not answer the closing handshake in
        time, and give their C{connectionLost} the reactor turn it runs in,
        so that their sessions close as any other (the handler's C{closed},
        the C{session closed} line) before the reactor stops.
        """
        for conn in list(self.factory.registry.allConnections()):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abortConnection()
        d: Deferred = self.factory.whenEmpty()
        d.addTimeout(1.0, self.reactor)
        try:
            yield d
        except TimeoutError:
            pass
