"""
The daemon's counters and its rate-limited warnings.

One L{Counters} exists per service (L{wsglue.tap.makeService} makes it): the
limits, the cluster link and everything else that counts an event adds to
it, and whoever reports (log lines, tests, metrics) reads it.  A
L{RateLimitedWarning} keeps a repeated warning (an attack, Redis down) to a
few log lines with totals instead of one line per event.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from twisted.logger import Logger

_log = Logger()


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
