"""
Free TCP ports on 127.0.0.1 for servers the tests start.

A port from C{bind(port 0)} lies in the kernel's ephemeral range, which
every outgoing connection also draws from: between the moment a test picks
it and the moment its daemon binds it (a second or so to start Python), a
client connection elsewhere in the suite (another daemon's Redis link, a
test's client) may take it, and the daemon fails with "Address already in
use".  Ports below that range are taken only by an explicit bind.
"""

from __future__ import annotations

import random
import socket

_FIRST = 20000


def _ephemeralStart() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago, outside the
    ephemeral range when there is room below it.
    """
    last = _ephemeralStart() - 1
    for _ in range(100):
        if last <= _FIRST:
            break
        port = random.randint(_FIRST, last)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    """
    Whether something accepts TCP connections on 127.0.0.1:C{port} now (on
    loopback a refusal is immediate): for a test to act the moment a
    starting daemon's port is bound.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
