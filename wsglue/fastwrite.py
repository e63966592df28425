"""
A TCP transport that hands data to the kernel at once.

Twisted's TCP transport buffers every C{write} and registers the socket for
writability (C{epoll_ctl}), sends on the next reactor turn, then
unregisters it (another C{epoll_ctl}).  For a WebSocket server that answers
small messages and fans one frame out to thousands of sockets that costs
two extra system calls per write, and a broadcast reaches its first client
only after the loop over all of them has finished.  L{ImmediateWriteServer}
tries C{send()} right away when nothing is buffered and falls back to
Twisted's buffering for whatever the kernel does not take, so ordering,
flow control (producers) and connection loss behave as before.

L{useImmediateWrites} switches a listening TCP port to it.  On Linux it
also sets C{TCP_NODELAY} on the listening socket, which the kernel copies
to every socket it accepts; Autobahn and twisted.web set the option on
each connection again, and L{NoDelayImmediateWriteServer} skips that
system call.
"""

from __future__ import annotations

import socket
import sys
from errno import EAGAIN, ENOBUFS, EWOULDBLOCK
from typing import Any, Iterable

from twisted.internet import tcp

_RETRY_LATER = (EAGAIN, EWOULDBLOCK, ENOBUFS)

# Linux copies a listening TCP socket's options, TCP_NODELAY among them, to
# the sockets accept() returns (the accepted socket is a clone of it).
_ACCEPT_INHERITS_NODELAY = sys.platform.startswith("linux")


class ImmediateWriteServer(tcp.Server):
    """
    A L{tcp.Server} whose C{write} sends at once when its buffer is empty.
    """

    def write(self, data: bytes) -> None:
        # Anything already buffered must go first, TLS started on this
        # transport has its own layer, and a closed or half-closed
        # transport drops data: Twisted's own write handles all of those.
        if (
            self._tempDataLen
            or self.dataBuffer
            or self.TLS
            or not self.connected
            or self._writeDisconnected
            or not data
        ):
            tcp.Server.write(self, data)
            return
        try:
            sent = self.socket.send(data)
        except OSError as e:
            if e.errno not in _RETRY_LATER:
                # Let the reactor's doWrite meet the error and report the
                # connection lost the usual way.
                tcp.Server.write(self, data)
                return
            sent = 0
        if sent < len(data):
            tcp.Server.write(self, data[sent:] if sent else data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    # Whether TCP_NODELAY is known to be set on this socket.
    _noDelay = False

    def setTcpNoDelay(self, enabled: Any) -> None:
        """
        Set or clear C{TCP_NODELAY}; setting it where it is known to be set
        already makes no system call.
        """
        if enabled and self._noDelay:
            return
        tcp.Server.setTcpNoDelay(self, enabled)
        self._noDelay = bool(enabled)


class NoDelayImmediateWriteServer(ImmediateWriteServer):
    """
    An L{ImmediateWriteServer} accepted by a listening socket that has
    C{TCP_NODELAY} set, so that it starts with it set too.
    """

    _noDelay = True


# The transports whose writes go to the kernel at once, as exact types (the
# protocol's fast paths test the type, not isinstance).
IMMEDIATE_TRANSPORTS = frozenset((ImmediateWriteServer, NoDelayImmediateWriteServer))
_PLAIN_TCP = frozenset((tcp.Client, tcp.Server)) | IMMEDIATE_TRANSPORTS


def sendNow(transport: Any) -> None:
    """
    Hand what a plain TCP transport holds to the kernel now, rather than on
    the next reactor turn: what the reactor would do on that turn, done
    early.  Anything else (TLS, a wrapper, a transport with nothing held)
    is left alone.

    A write error is left where it is for the reactor's own C{doWrite}, which
    meets it again and reports the connection lost the usual way.
    """
    if type(transport) not in _PLAIN_TCP or not transport.connected or transport.TLS:
        return
    if transport.dataBuffer or transport._tempDataLen:
        transport.doWrite()


def useImmediateWrites(port: Any) -> bool:
    """
    Make the connections that listening C{port} accepts from now on use
    L{ImmediateWriteServer}.  Ports that are not plain TCP are left alone.

    On Linux the listening socket also gets C{TCP_NODELAY}, and its
    connections are L{NoDelayImmediateWriteServer}s: small WebSocket frames
    must not wait for Nagle's algorithm, and both Autobahn and twisted.web
    set the option on every connection anyway.

    @return: whether C{port} was switched.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = ImmediateWriteServer
        if _ACCEPT_INHERITS_NODELAY:
            try:
                port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not listening (yet): each connection sets its own
            else:
                port.transport = NoDelayImmediateWriteServer
        return True
    return False
