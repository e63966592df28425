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

L{useImmediateWrites} switches a listening TCP port to it.
"""

from __future__ import annotations

from errno import EAGAIN, ENOBUFS, EWOULDBLOCK
from typing import Any, Iterable, List, Optional

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor

_RETRY_LATER = (EAGAIN, EWOULDBLOCK, ENOBUFS)


class ImmediateWriteServer(tcp.Server):
    """
    A L{tcp.Server} whose C{write} sends at once when its buffer is empty.

    While the protocol handles what one read brought, writes are held and
    handed to the kernel together when it returns: one C{send()} per read
    rather than one per frame (a C{wsglue.v1} message is answered with its
    reply and its ack; a client that sends several frames at once gets
    every answer in one segment).  They still leave in the same reactor
    turn, in the order they were written.
    """

    # The writes held while the protocol handles a read; None otherwise.
    _held: Optional[List[bytes]] = None

    def _dataReceived(self, data: Optional[bytes]) -> Any:
        held: List[bytes] = []
        self._held = held
        try:
            return tcp.Server._dataReceived(self, data)
        finally:
            self._held = None
            if held:
                self.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            if data:
                held.append(data)
            return
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


# Transports whose buffered data sendNow may hand to the kernel.
_PLAIN_TCP = frozenset((tcp.Client, tcp.Server, ImmediateWriteServer))


def sendNow(transport: Any) -> None:
    """
    Hand what a plain TCP transport holds to the kernel now, rather than on
    the next reactor turn: what the reactor would do on that turn, done
    early.  Anything else (TLS, a wrapper, a transport with nothing held,
    one that is closing) is left alone.

    A write error is left where it is for the reactor's own C{doWrite}, which
    meets it again and reports the connection lost the usual way.  A closing
    transport is left to the reactor because its last C{doWrite} returns
    what closes the connection, which only the reactor acts on.
    """
    if (
        type(transport) not in _PLAIN_TCP
        or not transport.connected
        or transport.TLS
        or transport.disconnecting
        or transport._writeDisconnecting
    ):
        return
    if transport.dataBuffer or transport._tempDataLen:
        transport.doWrite()


def useImmediateWrites(port: Any) -> bool:
    """
    Make the connections that listening C{port} accepts from now on use
    L{ImmediateWriteServer}.  Ports that are not plain TCP are left alone.

    @return: whether C{port} was switched.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = ImmediateWriteServer
        return True
    return False


def bufferedBytes(transport: Any) -> int:
    """
    How many bytes C{transport} holds that the kernel has not taken yet.

    For a TCP transport that is its unsent buffer (L{FileDescriptor} keeps
    C{dataBuffer} from C{offset} plus the not yet joined C{_tempDataLen});
    a TLS wrapper adds what it holds back before its handshake and passes
    the rest straight to the TCP transport below it.  This is on the
    broadcast path, so it only reads a few attributes.
    """
    total = 0
    # A wrapper (TLS, policies) sits on the transport it writes to; two
    # levels is all wsglue builds, the bound guards against cycles.
    for _ in range(4):
        if transport is None:
            break
        pending = getattr(transport, "_appSendBuffer", None)
        if pending:
            total += sum(len(chunk) for chunk in pending)
        data = getattr(transport, "dataBuffer", None)
        if data is not None:
            total += len(data) - getattr(transport, "offset", 0)
            total += getattr(transport, "_tempDataLen", 0)
            break
        transport = getattr(transport, "transport", None)
    return total


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: it relies on the buffer
    attributes of Twisted's TCP transport.
    """
    from wsglue.levers import missingAttributes

    # FileDescriptor sets its buffer state in __init__; read it off an
    # instance that was never connected.
    blank = tcp.Server.__new__(tcp.Server)
    try:
        FileDescriptor.__init__(blank)
    except Exception as e:
        return f"Twisted's FileDescriptor cannot be inspected: {e}"
    return missingAttributes(
        blank, ("dataBuffer", "_tempDataLen", "_tempDataBuffer", "offset", "doWrite", "_dataReceived")
    )


def publishAtOnce(registry: Any) -> None:
    """
    Make a cluster C{registry}'s Redis link hand each PUBLISH to the kernel
    at once (L{sendNow}): the registry publishes before it delivers to its
    own connections, so that the other nodes deliver meanwhile.
    """
    link = getattr(registry, "link", None)
    if link is not None and hasattr(link, "afterPublish"):
        link.afterPublish = sendNow
