"""
A handler for the tests of a cluster whose processes die, loaded by daemons
with C{--handler tests.cluster_record_handler:Recording}: whatever a worker
takes, and every C{sessionStarted} and C{sessionEnded}, is appended as a
line to the file named by C{$RECORD_FILE}, written at once (a worker killed
with SIGKILL loses none of its lines), so that the test counts them across
every worker, dead or alive.

Lines: C{took <text>}, C{started <sid> <pid>}, C{ended <sid> <pid>}.

While the file named by C{$HOLD_FILE} exists, every new connection is
aborted when it opens (an outage, whichever worker takes it).
"""

from __future__ import annotations

import os
from typing import Any, Optional

# Where Recording writes and what holds connections off (environment
# variables, not WSGLUE_ ones: those must name options).
RECORD_VARIABLE = "RECORD_FILE"
HOLD_VARIABLE = "HOLD_FILE"


def readRecord(path: str) -> list:
    """
    The lines recorded so far in C{path}, each split in words.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split(" ") for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


class Recording:
    """
    Commands: C{pid} → C{pid <pid>}; C{count <text>} → C{count <text> =
    <times any worker took <text>>}; C{online <sid>} → C{online True|False};
    C{onlineCount} → C{onlineCount <n>}; anything else is recorded as taken
    and answered C{ok}.
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.path = os.environ[RECORD_VARIABLE]
        self.hold = os.environ.get(HOLD_VARIABLE, "")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode("utf-8"))

    def opened(self, sid: str, conn: Any) -> None:
        if self.hold and os.path.exists(self.hold):
            conn.transport.abortConnection()

    def sessionStarted(self, sid: str) -> None:
        self._write(f"started {sid} {os.getpid()}")

    def sessionEnded(self, sid: str) -> None:
        self._write(f"ended {sid} {os.getpid()}")

    def received(self, sid: str, conn: Any, message: Any) -> Optional[Any]:
        if isinstance(message, bytes):
            return None
        verb, _, rest = message.partition(" ")
        if message == "pid":
            return f"pid {os.getpid()}"
        if verb == "count":
            taken = sum(1 for line in readRecord(self.path) if line[0] == "took" and " ".join(line[1:]) == rest)
            return f"count {rest} = {taken}"
        if verb == "online":
            from twisted.internet import defer

            d = defer.maybeDeferred(self.registry.online, rest or sid)
            return d.addCallback(lambda yes: f"online {yes}")
        if verb == "onlineCount":
            from twisted.internet import defer

            d = defer.maybeDeferred(self.registry.onlineCount)
            return d.addCallback(lambda n: f"onlineCount {n}")
        self._write(f"took {message}")
        return "ok"
