"""
The daemon's counters and its rate-limited warnings.

One L{Counters} exists per service (L{wsglue.tap.makeService} makes it): the
limits, the cluster link and everything else that counts an event adds to
it, and whoever reports (log lines, tests, metrics) reads it.  A
L{RateLimitedWarning} keeps a repeated warning (an attack, Redis down) to a
few log lines with totals instead of one line per event.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Optional

from twisted.logger import Logger

_log = Logger()

# The upper bounds of the broadcast histogram's buckets, in seconds.
BROADCAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Counters(Dict[str, int]):
    """
    Named event counters: a C{dict} of C{name -> count} (reading a name
    that never counted gives 0) with L{add}.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        dict.__init__(self, dict.fromkeys(names, 0))

    def __missing__(self, name: str) -> int:
        return 0

    def declare(self, names: Iterable[str]) -> None:
        """
        Make C{names} appear (at 0) in the counters if they are not there
        yet, so that a report lists them before they first count.
        """
        for name in names:
            self.setdefault(name, 0)

    def sent(self, size: int) -> None:
        """
        Count a message of C{size} payload bytes sent to a connection.
        """
        self["messages_sent"] += 1
        self["bytes_sent"] += size

    def received(self, size: int) -> None:
        """
        Count a message of C{size} payload bytes received from a connection.
        """
        self["messages_received"] += 1
        self["bytes_received"] += size

    def add(self, name: str, n: int = 1) -> int:
        """
        Count C{n} more C{name} events; return the new total.
        """
        total = self[name] + n
        self[name] = total
        return total


class RateLimitedWarning:
    """
    Warnings logged at most once per C{interval} seconds for each key.  The
    event carries C{suppressed}, how many were held back since the last
    line for that key, and C{since}, the same with this one.

    @param clock: where the time comes from (the reactor, or a C{Clock}).
    """

    def __init__(self, clock: Any, interval: float = 10.0, log: Optional[Logger] = None) -> None:
        self.clock = clock
        self.interval = interval
        self.log = log if log is not None else _log
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}

    def __call__(self, key: str, format: str, **fields: Any) -> bool:
        """
        Log C{format} with C{fields} at warn level unless a line for C{key}
        went out less than C{interval} seconds ago; return whether it did.
        """
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._held.pop(key, 0)
        self.log.warn(format, suppressed=suppressed, since=suppressed + 1, **fields)
        return True


def observeBroadcast(counters: Counters, seconds: float) -> None:
    """
    Count one broadcast that took C{seconds} in the broadcast histogram.
    """
    for bound in BROADCAST_BUCKETS:
        if seconds <= bound:
            counters.add(f"broadcast_seconds_bucket:{bound}")
            break
    counters.add("broadcast_seconds_count")
    counters.add("broadcast_seconds_sum_ns", int(seconds * 1e9))


def timeBroadcasts(registry: Any, counters: Counters, clock: Callable[[], float] = time.perf_counter) -> None:
    """
    Time every broadcast that C{registry} delivers to this process's
    connections (C{broadcast}, and C{broadcastLocal} of a cluster registry,
    through which its other broadcasts go) into the histogram.
    """
    for name in ("broadcast", "broadcastLocal"):
        method = getattr(registry, name, None)
        if method is None:
            continue

        def timed(message: Any, _method: Callable[[Any], int] = method) -> int:
            start = clock()
            try:
                return _method(message)
            finally:
                observeBroadcast(counters, clock() - start)

        setattr(registry, name, timed)
