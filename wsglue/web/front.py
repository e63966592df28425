"""
The one-port HTTP front: the static page and the WebSocket endpoint.

A request for C{/} that asks for C{Upgrade: websocket} goes to the WebSocket
factory: when it is the first request of its connection and in the common
form, the WebSocket protocol the connection started with takes it without
twisted.web (L{GlueSite.buildProtocol}); otherwise it goes through Autobahn's
L{WebSocketResource}.  Every other request is served from the static folder.
The static folder never lists directories and never serves a path outside
itself (C{..}, encoded variants, symlinks that lead out).
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.filepath import FilePath
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import File

_NOT_FOUND = notFound()


class StaticFolder(File):
    """
    A L{File} that serves only what lies inside its root folder and never
    lists a directory.
    """

    childNotFound = _NOT_FOUND

    def __init__(self, path: str, *args: Any, root: str = "", **kwargs: Any) -> None:
        File.__init__(self, path, *args, **kwargs)
        self.root = root or os.path.realpath(path)

    def createSimilarFile(self, path: str) -> "StaticFolder":
        f = File.createSimilarFile(self, path)
        f.root = self.root
        return f

    def directoryListing(self) -> IResource:
        return _NOT_FOUND

    def render(self, request: Any) -> bytes:
        # A folder asked for without its trailing slash: File would
        # redirect to the slash form, which is a 404 anyway.
        if self.isdir():
            return _NOT_FOUND.render(request)
        return File.render(self, request)

    def getChild(self, path: bytes, request: Any) -> IResource:
        # Undecodable and NUL-bearing names cannot name a file of ours; the
        # file system calls would raise on a NUL (a 500 and a traceback).
        if b"\x00" in path:
            return _NOT_FOUND
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_FOUND
        child = File.getChild(self, path, request)
        if isinstance(child, File) and not self._inside(child):
            return _NOT_FOUND
        return child

    def _inside(self, child: FilePath) -> bool:
        real = os.path.realpath(child.path)
        return real == self.root or real.startswith(self.root + os.sep)


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


# The opening handshakes DeadlineChannel hands straight to the WebSocket
# protocol: the first request of a connection, complete, in the common
# form: "GET / HTTP/1.1" (a query allowed), at most 100 well-formed header
# lines, no body, one of them "Upgrade: ...websocket...".  Any other
# request, and anything that is not a request at all, goes through
# twisted.web as before, which also answers the malformed ones.
_SHORT_HANDSHAKE = re.compile(
    rb"GET /(?:\?[!-~]*)? HTTP/1\.1\r\n"
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n){1,100}"
    rb"\r\n"
)
_UPGRADE_WEBSOCKET = re.compile(rb"\r\nupgrade:[^\r]*websocket", re.IGNORECASE)
_BODY = re.compile(rb"\r\n(?:content-length|transfer-encoding):", re.IGNORECASE)
# How much of a first request is held back to look at; 8 KiB is far above
# a browser's handshake, and twisted.web's own limit is 16 KiB.
_SHORT_HANDSHAKE_MAX = 8192


def firstRequestKind(head: bytes) -> Optional[bool]:
    """
    What the first bytes C{head} of a connection are: C{None} while the
    request may still be incomplete (no blank line yet, under 8 KiB);
    C{True} for a complete opening handshake in the common form (see
    L{_SHORT_HANDSHAKE}), which the WebSocket protocol takes without
    twisted.web; C{False} for anything else, which goes to twisted.web.
    """
    end = head.find(b"\r\n\r\n") + 4
    if end < 4:
        return None if len(head) < _SHORT_HANDSHAKE_MAX else False
    return bool(
        end <= _SHORT_HANDSHAKE_MAX
        and _SHORT_HANDSHAKE.fullmatch(head, 0, end)
        and _UPGRADE_WEBSOCKET.search(head, 0, end)
        and not _BODY.search(head, 0, end)
    )


def takeOver(transport: Any, protocol: Any) -> None:
    """
    Connect C{protocol} to C{transport} in place of the protocol it has, as
    Autobahn's L{WebSocketResource} does (TLS wraps the protocol).
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)


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
    # The start of the first request while it may still be a WebSocket
    # handshake to hand over (see dataReceived); None once it is decided.
    _head: Optional[bytes] = None
    # For a connection handed over by the WebSocket protocol that was its
    # first (see GlueSite.firstRequest): the seconds left of its deadline.
    firstDeadline: Optional[float] = None

    def connectionMade(self) -> None:
        site = self.site
        if (
            self.firstDeadline is None
            and getattr(site, "websocketFactory", None) is not None
            and not getattr(site, "handshakeTimeout", None)
        ):
            # Without a deadline GlueSite builds this channel first: a
            # handshake is handed over from here (see dataReceived).
            self._head = b""
        HTTPChannel.connectionMade(self)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """
        On a connection this channel is the first protocol of (a site with
        a WebSocket factory but no handshake deadline, see
        L{GlueSite.buildProtocol}), hand an opening handshake in the common
        form straight to the WebSocket protocol, and everything else to
        twisted.web.

        Through twisted.web a handshake is parsed twice: into a
        L{twisted.web.server.Request} that is routed and rendered, then
        again by Autobahn from bytes rebuilt from it.  Skipping the first
        parse is about a quarter of the CPU time of a handshake.
        """
        head = self._head
        if head is None:
            HTTPChannel.dataReceived(self, data)
            return
        head += data
        kind = firstRequestKind(head)
        if kind is None:
            # Not complete yet; the idle timeout still runs.
            self._head = head
            self.resetTimeout()
            return
        self._head = None
        if kind:
            protocol = self.site.websocketFactory.buildProtocol(self.transport.getPeer())
            if protocol is not None:
                self._handOver(protocol, head)
                return
        HTTPChannel.dataReceived(self, head)

    def _handOver(self, protocol: Any, data: bytes) -> None:
        self._disarm()
        transport, self.transport = self.transport, None
        self.setTimeout(None)
        transport.unregisterProducer()
        takeOver(transport, protocol)
        protocol.dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Any) -> None:
        HTTPChannel.requestDone(self, request)
        # Kept alive: the next request gets its own deadline.
        if self.persistent and self.transport is not None and not self.requests:
            self._arm()

    def connectionLost(self, reason: Any) -> None:
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
        if self.transport is not None:
            # abortConnection: a peer that does not read must not keep the
            # socket (and what we buffered for it) alive any longer.
            self.transport.abortConnection()


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
        result = WebSocketResource.render(self, request)
        if transport is not None and channel.transport is None:
            if getattr(transport, "producer", None) is channel:
                transport.unregisterProducer()
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
    # The WebSocket factory that handshakes go to (see buildProtocol).
    websocketFactory: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        """
        The first protocol of a connection: with a WebSocket factory and a
        handshake deadline, the factory's WebSocket protocol, which gives
        its first request to L{firstRequest}; otherwise a
        L{DeadlineChannel}.

        Nearly every connection to a WebSocket gateway is a WebSocket, so
        the connection starts as one: its opening-handshake timer is the
        deadline for the first request, and no HTTP channel is built, set
        up and handed over from for it.
        """
        factory = self.websocketFactory
        if factory is not None and self.handshakeTimeout:
            protocol = factory.buildProtocol(addr)
            if protocol is not None:
                protocol._front = self
                return protocol
        return Site.buildProtocol(self, addr)

    def firstRequest(self, protocol: Any, data: bytes) -> None:
        """
        Take C{data}, read by C{protocol} (built by L{buildProtocol}) before
        its first request is complete.  A handshake in the common form
        (see L{firstRequestKind}) goes on to the WebSocket protocol; any
        other request, and anything that is not a request, to a
        L{DeadlineChannel} of twisted.web, which answers it (through
        Autobahn's L{WebSocketResource} for the other handshakes).
        """
        head = protocol.data + data
        kind = firstRequestKind(head)
        if kind is None:
            # Not complete yet; the handshake timer still runs.
            protocol.data = head
            return
        del protocol._front
        if kind:
            protocol.data = b""
            protocol._dataReceived(head)
            return
        transport = protocol.transport
        left = protocol.leaveForHTTP()
        channel = Site.buildProtocol(self, transport.getPeer())
        # The deadline still counts from the connection's start.
        channel.firstDeadline = left
        takeOver(transport, channel)
        channel.dataReceived(head)


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
