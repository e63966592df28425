"""
The connection-starts-as-WebSocket lever: on a port whose nearly every
connection is a WebSocket, a connection starts as the WebSocket protocol,
and a first request that is a handshake in the common form goes to it
without twisted.web.

Through twisted.web a handshake is parsed twice: into a
L{twisted.web.server.Request} that is routed and rendered, then again by
Autobahn from bytes rebuilt from it; and each connection builds an HTTP
channel, a timer and a handover.  Anything that is not a handshake in the
common form (the page, an uncommon handshake, garbage) goes to
twisted.web's L{DeadlineChannel} as before, with the time left of the
connection's deadline, and is answered as without the lever.

The front and the protocol talk through a small interface
(L{IFrontConnection}): the protocol gives the front the bytes of its first
request until they are decided (L{GlueFront.firstRequest}), and the front
takes the connection back for twisted.web with C{leaveForHTTP}.
"""

from __future__ import annotations

import re
from types import MethodType
from typing import Any, Optional, Protocol

from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from wsglue.web.front import DeadlineChannel, GlueSite


class IFrontConnection(Protocol):
    """
    What the front needs of the WebSocket protocol a connection started
    as (L{wsglue.levers.protocol.LeveredProtocol}).
    """

    # The bytes read so far, while the first request is incomplete.
    data: bytes
    transport: Any

    def _dataReceived(self, data: bytes) -> None:
        """
        Take the bytes of a handshake in the common form (Autobahn's own
        C{dataReceived}).
        """

    def leaveForHTTP(self) -> Optional[float]:
        """
        Let go of the connection for twisted.web; return the seconds left
        of its handshake deadline, or C{None} without one.
        """


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


class HandOverChannel(DeadlineChannel):
    """
    The first protocol of a connection on a site without a handshake
    deadline: a L{DeadlineChannel} that hands a first request that is a
    handshake in the common form straight to the WebSocket protocol.
    """

    # The start of the first request while it may still be a WebSocket
    # handshake to hand over; None once it is decided.
    _head: Optional[bytes] = None

    def connectionMade(self) -> None:
        if self.firstDeadline is None and not self.site.handshakeTimeout:
            self._head = b""
        DeadlineChannel.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
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
            assert self.transport is not None, "data on a connection without a transport"
            protocol = self.site.websocketFactory.buildProtocol(self.transport.getPeer())
            if protocol is not None:
                self._handOver(protocol, head)
                return
        HTTPChannel.dataReceived(self, head)

    def _handOver(self, protocol: Any, data: bytes) -> None:
        self._disarm()
        transport: Any = self.transport  # a TCP transport: a producer too
        self.transport = None
        self.setTimeout(None)
        transport.unregisterProducer()
        takeOver(transport, protocol)
        protocol.dataReceived(data)


def _buildProtocol(site: GlueSite, addr: Any) -> Any:
    """
    The first protocol of a connection: with a handshake deadline, the
    factory's WebSocket protocol, which gives its first request to
    L{firstRequest}; otherwise a L{HandOverChannel}.

    The WebSocket protocol's opening-handshake timer is then the deadline
    for the first request (the shorter of the site's and Autobahn's).
    """
    factory = site.websocketFactory
    if site.handshakeTimeout:
        protocol = factory.buildProtocol(addr)
        if protocol is not None:
            protocol._front = site
            return protocol
    return Site.buildProtocol(site, addr)


def firstRequest(site: GlueSite, protocol: IFrontConnection, data: bytes) -> None:
    """
    Take C{data}, read by C{protocol} (built by L{_buildProtocol}) before
    its first request is complete.  A handshake in the common form (see
    L{firstRequestKind}) goes on to the WebSocket protocol; any other
    request, and anything that is not a request, to a L{DeadlineChannel}
    of twisted.web, which answers it (through Autobahn's
    L{WebSocketResource} for the other handshakes).
    """
    head = protocol.data + data
    kind = firstRequestKind(head)
    if kind is None:
        # Not complete yet; the handshake timer still runs.
        protocol.data = head
        return
    del protocol._front  # type: ignore[attr-defined]
    if kind:
        protocol.data = b""
        protocol._dataReceived(head)
        return
    transport = protocol.transport
    left = protocol.leaveForHTTP()
    channel = Site.buildProtocol(site, transport.getPeer())
    # The deadline still counts from the connection's start.
    channel.firstDeadline = left
    takeOver(transport, channel)
    channel.dataReceived(head)


def leverSite(site: GlueSite) -> None:
    """
    Turn the lever on for the connections C{site} builds from now on.
    """
    if site.websocketFactory is None:
        return
    site.protocol = HandOverChannel
    site.buildProtocol = MethodType(_buildProtocol, site)  # type: ignore[method-assign]
    site.firstRequest = MethodType(firstRequest, site)  # type: ignore[attr-defined]


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: the WebSocket protocol it
    builds first must be the connection lever's (see
    L{wsglue.levers.protocol.LeveredProtocol.dataReceived}).
    """
    return None
