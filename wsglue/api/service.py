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

from wsglue.process.service import CannotListen

_log = Logger()


class ApiService(Service):
    """
    Listen on C{endpoint} (described by C{description}) with C{site}.
    """

    port: Any = None

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, site: Any) -> None:
        self.endpoint: Any = endpoint
        self.description = description
        self.site = site

    def bind(self) -> None:
        """
        Bind the endpoint, unless it is bound already.

        @raise CannotListen: if it cannot be.
        """
        if self.port is not None:
            return
        results: list = []
        self.endpoint.listen(self.site).addBoth(results.append)
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
        _log.info("started api server at {url}", url=describeHTTP(self.port, self.description))

    def stopService(self) -> Deferred:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return succeed(None).addCallback(lambda _: port.stopListening())


def describeHTTP(port: Any, description: str) -> str:
    """
    The URL the API answers at: C{http://127.0.0.1:9997}.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"http+unix://{name}"
    if host == "":
        host = "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if description.startswith(("ssl:", "tls:")) else "http"
    return f"{scheme}://{host}:{address.port}"
