"""
What a source is (L{Source}: a twisted Service that reads entries from
outside and delivers them) and how C{--source URL} picks one (L{parseSource}).

A source for another system (Kafka, NATS) is a module beside
L{wsglue.sources.redisstream} with a URL parser and a L{Source} subclass,
named in L{SCHEMES}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred

from wsglue.counters import Counters


class BadSourceURL(ValueError):
    """
    A C{--source} URL that names no source; the message says why.
    """


class Source(Service):
    """
    A source of messages: started with the daemon, stopped with it.

    Subclasses read their entries once started, deliver each through
    C{delivery} (a L{wsglue.api.delivery.LocalDelivery}: C{send(sid,
    message)} and C{broadcast(message)}, Deferreds), and count them in
    C{counters} under C{source_entries:delivered} and C{source_entries:dead}.
    """

    def __init__(self, delivery: Any, counters: Counters) -> None:
        self.delivery = delivery
        self.counters = counters
        self.counters.declare(["source_entries:delivered", "source_entries:dead"])
        self._waiters: List[Deferred] = []
        self._isReady = False

    def whenReady(self) -> Deferred:
        """
        Fire once the source reads (for a Redis Stream: its consumer group
        exists).
        """
        if self._isReady:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def ready(self) -> None:
        """
        Called by the subclass once it reads.
        """
        if self._isReady:
            return
        self._isReady = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


def _redisStream(url: str) -> Any:
    from wsglue.sources.redisstream import parseStreamURL

    return parseStreamURL(url)


# URL scheme -> the parser of its URLs, which returns a spec with
# C{makeSource(delivery, counters, reactor)} and C{prepare()}.
SCHEMES: Dict[str, Callable[[str], Any]] = {"redis-stream": _redisStream}


def parseSource(url: str) -> Any:
    """
    Parse a C{--source} URL into the spec of its source.

    @raise BadSourceURL: with a one-line message fit for a user.
    """
    scheme = url.strip().split("://", 1)[0].lower() if "://" in url else ""
    parser = SCHEMES.get(scheme)
    if parser is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise BadSourceURL(f"unknown kind of source (use {known})")
    spec = parser(url.strip())
    return spec
