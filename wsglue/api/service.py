"""
The API's listening service: binds C{--api} (before twistd daemonizes, as
the WebSocket port is), says where it listens, stops listening on stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsglue.process.service import CannotListen, describeAddress

_log = Logger()


class ApiService(Service):
    """
    Listen on C{endpoint} (described by C{description}) with C{site}.
    """

    port: Any = None

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        site: Any,
        announce: bool = True,
        shared: Any = None,
        reactor: Any = None,
    ) -> None:
        """
        @param shared: in a worker of C{--workers N}, its
            L{wsglue.api.shared.SharedCounters}, written while it runs.
        """
        self.shared = shared
        self.reactor = reactor
        self.endpoint: Any = endpoint
        self.description = description
        self.site = site
        # A worker of --workers N does not announce: its parent said it once.
        self.announce = announce

    def bind(self, factory: Any = None) -> None:
        """
        Bind the endpoint (with C{factory}, by default the site), unless it
        is bound already.

        @raise CannotListen: if it cannot be.
        """
        if self.port is not None:
            return
        results: list = []
        self.endpoint.listen(self.site if factory is None else factory).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            why = results[0].getErrorMessage() if results else "did not complete"
            raise CannotListen(f"wsglue: cannot listen on --api {self.description}: {why}")
        self.port = results[0]

    def privilegedStartService(self) -> None:
        self.bind()
        Service.privilegedStartService(self)

    def startService(self) -> None:
        self.bind()
        Service.startService(self)
        if self.shared is not None:
            self.shared.start(self.reactor)
        url = describeHTTP(self.port, self.description)
        if self.announce:
            _log.info("started api server at {url}", url=url)
        else:
            _log.info("accepting api requests at {url}", url=url)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if self.shared is not None:
            self.shared.stop()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return succeed(None).addCallback(lambda _: port.stopListening())


def describeHTTP(port: Any, description: str) -> str:
    """
    The URL the API answers at: C{http://127.0.0.1:9997}.
    """
    return describeAddress(port, description.startswith(("ssl:", "tls:")), "http")
