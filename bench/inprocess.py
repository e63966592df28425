"""
The cost of wsglue's own code on the two hot paths, in process, with the
system calls left out::

    python -m bench.inprocess              # 200,000 frames, 10,000 connections
    python -m bench.inprocess --frames 50000 --connections 2000

It opens connections of a L{GlueServerFactory} on TCP transports whose
socket takes every write without a system call, then prints:

  - microseconds per opening handshake, from the site building the
    connection's first protocol to the open, registered session (the
    check of the first request, Autobahn's handshake, the cookie, the
    C{session opened} log event);
  - microseconds per C{ping} frame, from C{dataReceived} to the C{pong}
    handed to the socket (frame parsing, the handler, framing the reply);
  - microseconds per connection reached by C{registry.broadcast}.

Each is the best of three rounds.  The side-by-side bench (C{python -m
bench}) measures the whole server; this separates wsglue's share from the
reactor's and the kernel's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import txaio  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from bench.handler import Bench  # noqa: E402
from tests.test_protocol import clientFrame, handshakeBytes  # noqa: E402
from wsglue.levers.fastwrite import ImmediateWriteServer  # noqa: E402
from wsglue.protocol import GlueServerFactory, GlueServerProtocol  # noqa: E402
from wsglue.web.front import makeSite  # noqa: E402


class _Port:
    _realPortNumber = 0


class _Socket:
    """
    A connected socket that takes everything at once and sends nothing.
    """

    def send(self, data: bytes) -> int:
        return len(data)

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockname(self) -> Tuple[str, int]:
        return ("127.0.0.1", 9998)

    def getpeername(self) -> Tuple[str, int]:
        return ("127.0.0.1", 50000)


def openConnection(site: Any, clock: Any, request: bytes) -> GlueServerProtocol:
    """
    Connect the first protocol of C{site} and hand it C{request}, as a TCP port
    would; return the WebSocket protocol it became.
    """
    peer = IPv4Address("TCP", "127.0.0.1", 50000)
    transport = ImmediateWriteServer(_Socket(), None, ("127.0.0.1", 50000), _Port(), 0, clock)
    first = site.buildProtocol(peer)
    transport.protocol = first
    first.makeConnection(transport)
    transport.protocol.dataReceived(request)
    proto = transport.protocol
    assert isinstance(proto, GlueServerProtocol), proto
    return proto


def best(rounds: List[float]) -> float:
    return min(rounds)


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--connections", type=int, default=10_000)
    config = p.parse_args(argv)
    clock = MemoryReactorClock()
    txaio.config.loop = clock
    factory = GlueServerFactory(reactor=clock, pingInterval=0, handlerFactory=Bench)
    site = makeSite(os.path.join(ROOT, "static"), factory, handshakeTimeout=10, reactor=clock)
    request = handshakeBytes({})
    count = max(1, config.connections // 2)
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            openConnection(site, clock, request)
        rounds.append((time.perf_counter() - started) / count * 1e6)
    print(f"handshake: {best(rounds):.1f} us per opening handshake (best of 3, {count} each)")
    # A fresh factory, so the broadcast below reaches only its own sessions.
    factory = GlueServerFactory(reactor=clock, pingInterval=0, handlerFactory=Bench)
    site = makeSite(os.path.join(ROOT, "static"), factory, handshakeTimeout=10, reactor=clock)
    proto = openConnection(site, clock, request)
    frame = clientFrame(1, b"ping")
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(config.frames):
            proto.dataReceived(frame)
        rounds.append((time.perf_counter() - started) / config.frames * 1e6)
    print(f"echo: {best(rounds):.2f} us per ping frame (best of 3, {config.frames} frames)")
    for _ in range(config.connections - 1):
        openConnection(site, clock, request)
    reached = len(list(factory.registry.allConnections()))
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(10):
            factory.registry.broadcast("x" * 64)
        rounds.append((time.perf_counter() - started) / 10 / reached * 1e6)
    print(f"broadcast: {best(rounds):.2f} us per connection (best of 3, {reached} connections)")


if __name__ == "__main__":
    main(sys.argv[1:])
