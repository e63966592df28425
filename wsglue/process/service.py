"""
The listening service: binds the endpoint, says where it listens, and on stop
closes every WebSocket with 1001 (going away) before the process exits.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.protocol import GlueServerFactory

_log = Logger()


class CannotListen(SystemExit, Exception):
    """
    The endpoint could not be bound.  A L{SystemExit}, so that twistd exits
    non-zero with this one line rather than a traceback; and an
    L{Exception}, so that a daemonizing twistd (no C{-n}) catches it and
    tells the process that started it, which would otherwise wait for ever.
    """


def describeAddress(port: IListeningPort, secure: bool) -> str:
    """
    The C{ws://} URL (or unix socket path) that a listening port serves,
    naming the address it is bound to: C{ws://0.0.0.0:9998} for every IPv4
    interface, C{ws://[::]:9998} for every IPv6 one, C{ws://127.0.0.1:9998}
    for one interface.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"ws+unix://{name}"
    if host == "":
        host = "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    scheme = "wss" if secure else "ws"
    return f"{scheme}://{host}:{address.port}"


def stopCleanlyOnSignals(reactor: Any, doing: str = "shutting down") -> None:
    """
    Make SIGTERM and SIGINT stop C{reactor} as a clean exit.

    The reactor's own handlers make twistd re-raise the signal once it has
    shut down, so the process dies of SIGTERM.  A graceful stop that closed
    every connection with 1001 is a clean exit: status 0.  Call it once the
    reactor runs (it installs its handlers at start-up).
    """

    def stopReactor() -> None:
        if reactor.running:
            reactor.stop()

    def onSignal(signum: int, frame: Any) -> None:
        _log.info("received {name}, {doing}", name=signal.Signals(signum).name, doing=doing)
        reactor.callFromThread(stopReactor)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, onSignal)


class WebSocketService(Service):
    """
    Listen on C{endpoint} with C{site}; on stop, stop listening and close the
    WebSockets of C{factory} with 1001, waiting at most C{drainTimeout}
    seconds for the peers to answer.
    """

    port: Optional[IListeningPort] = None

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

    def privilegedStartService(self) -> None:
        # Bind before privileges are shed (ports below 1024) and before the
        # reactor runs, so a port that cannot be bound ends start-up at once.
        results: list = []
        self.endpoint.listen(self.site).addBoth(results.append)
        if not results:
            raise CannotListen(f"wsglue: listening on {self.description} did not complete")
        result = results[0]
        if isinstance(result, Failure):
            raise CannotListen(
                f"wsglue: cannot listen on {self.description}: {result.getErrorMessage()}"
            )
        self.port = result
        for hook in self.onListening:
            hook(result)
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        Service.startService(self)
        secure = self.description.startswith(("ssl:", "tls:"))
        if self.announce:
            _log.info(
                "started websocket server at {url}",
                url=describeAddress(self.port, secure),
            )
        else:
            _log.info("accepting connections at {url}", url=describeAddress(self.port, secure))
        if self.handleSignals:
            self.reactor.callWhenRunning(stopCleanlyOnSignals, self.reactor)

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

