"""
The one-port HTTP front: the static page and the WebSocket endpoint.

A request for C{/} that asks for C{Upgrade: websocket} goes to the WebSocket
factory through Autobahn's L{WebSocketResource}; every other request is
served from the static folder (L{wsglue.web.static.StaticFolder}).  Every
connection gets a deadline for its first complete request
(L{DeadlineChannel}), so that a peer that trickles bytes cannot hold it.

The connection-starts-as-WebSocket lever (L{wsglue.levers.front}) changes
how a connection's first request reaches the WebSocket protocol; what is
answered stays the same.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import File

from wsglue.web.static import StaticFolder


def _isUpgrade(request: Any) -> bool:
    for value in request.requestHeaders.getRawHeaders(b"upgrade", ()):
        if b"websocket" in value.lower():
            return True
    return False


class GlueRoot(Resource):
    """
    The root resource: C{/} with C{Upgrade: websocket} is the WebSocket
    endpoint, everything else is the static folder.
    """

    def __init__(self, static: File, websocket: IResource) -> None:
        Resource.__init__(self)
        self.static = static
        self.websocket = websocket

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        if name == b"" and not request.postpath and _isUpgrade(request):
            return self.websocket
        return self.static.getChildWithDefault(name, request)

    def render(self, request: Any) -> bytes:
        return self.static.render(request)


class DeadlineChannel(HTTPChannel):
    """
    An L{HTTPChannel} that drops a peer which has not sent a complete
    request within C{site.handshakeTimeout} seconds of connecting (or of
    its previous response, on a kept-alive connection).

    The channel's own timeout is an idle timeout: a peer that trickles one
    byte at a time resets it for ever (slowloris).  This deadline is
    absolute.  Once a request is complete, the WebSocket handshake belongs
    to Autobahn (its C{openHandshakeTimeout}) and the page to the idle
    timeout.
    """

    _deadline: Any = None
    # Set by the Site that builds the channel (not declared by HTTPChannel).
    site: Any
    # For a connection handed over by the WebSocket protocol that was its
    # first (see wsglue.levers.front): the seconds left of its deadline.
    firstDeadline: Optional[float] = None

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self._arm()

    def allContentReceived(self) -> None:
        self._disarm()
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Any) -> None:
        HTTPChannel.requestDone(self, request)
        # Kept alive: the next request gets its own deadline.
        if self.persistent and self.transport is not None and not self.requests:
            self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        HTTPChannel.connectionLost(self, reason)

    def _arm(self) -> None:
        first, self.firstDeadline = self.firstDeadline, None
        timeout = getattr(self.site, "handshakeTimeout", None) if first is None else first
        if (timeout or first is not None) and self._deadline is None:
            self._deadline = self.callLater(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        limits = getattr(self.site, "limits", None)
        if limits is not None:
            limits.bite("dropped_handshake_timeout")
        transport: Any = self.transport  # a TCP or TLS transport: abortConnection
        if transport is not None:
            # abortConnection: a peer that does not read must not keep the
            # socket (and what we buffered for it) alive any longer.
            transport.abortConnection()


class WebSocketUpgrade(WebSocketResource):
    """
    Autobahn's L{WebSocketResource}, letting go of the HTTP channel once the
    connection belongs to the WebSocket protocol.

    The channel registered itself as the TCP transport's producer when the
    connection was made, and Autobahn's takeover leaves it there: the
    channel, the upgrade request, its headers and its body then lived as
    long as the WebSocket session, about 2 KiB of every idle session.  The
    channel never paused the transport after the takeover (a request was
    being handled), so nothing is lost by unregistering it.
    """

    def render(self, request: Any) -> Any:
        channel = request.channel
        transport = channel.transport
        if transport is not None:
            # Before the takeover: the WebSocket protocol registers its own
            # producer once open (see wsglue.protocol.SendFlow).
            transport.unregisterProducer()
        result = WebSocketResource.render(self, request)
        if transport is not None and channel.transport is None:
            # The request and the channel refer to each other; unlinking
            # them frees both at once rather than at the next collection.
            channel.requests = []
        return result


class GlueSite(Site):
    """
    The L{Site} of wsglue: plain HTTP/1.1 channels with a handshake
    deadline (L{DeadlineChannel}).

    @ivar handshakeTimeout: seconds a peer has to send a complete request;
        C{None} or C{0} for no deadline.
    @ivar limits: the L{wsglue.limits.Limits} whose counter records the
        peers dropped for it, or C{None}.
    """

    # HTTP/2 is of no use here: a WebSocket upgrade is an HTTP/1.1 request.
    protocol = DeadlineChannel  # type: ignore[assignment]

    handshakeTimeout: Optional[float] = None
    limits: Any = None
    # The WebSocket factory that handshakes go to.
    websocketFactory: Any = None


def makeSite(
    staticPath: str,
    factory: Any,
    timeout: float = 60,
    handshakeTimeout: Optional[float] = None,
    reactor: Any = None,
) -> Site:
    """
    The L{Site} serving C{staticPath} and the WebSocket C{factory} on one
    port.  C{timeout} bounds how long an HTTP connection may sit idle;
    C{handshakeTimeout} how long a peer may take to send a complete request
    in all (see L{DeadlineChannel}).
    """
    # A file whose type is not known is bytes, not HTML (File's default).
    static = StaticFolder(staticPath, defaultType="application/octet-stream")
    root = GlueRoot(static, WebSocketUpgrade(factory))
    site = GlueSite(root, timeout=timeout, reactor=reactor)
    site.displayTracebacks = False
    site.handshakeTimeout = handshakeTimeout or None
    site.limits = getattr(factory, "limits", None)
    site.websocketFactory = factory
    return site
