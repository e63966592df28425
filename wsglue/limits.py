"""
Limits that keep one client (or one address) from costing the daemon
unbounded connections, messages or memory, and the counters that say how
often each one bit.

A L{Limits} is owned by the WebSocket factory, like the registry; the
protocol asks it before admitting a connection and tells it when one goes.
Time comes from the factory's reactor, so tests drive it with a C{Clock}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.logger import Logger

from wsglue.counters import Counters, RateLimitedWarning

_log = Logger()

# The counters a L{Limits} keeps, and what each counts.
COUNTERS: Dict[str, str] = {
    "refused_max_connections": "handshakes refused with 503: daemon full",
    "refused_per_ip": "handshakes refused with 429: address over its limit",
    "closed_per_session": "connections closed with 1008: session over its limit",
    "closed_message_rate": "connections closed with 1008: too many messages",
    "closed_send_buffer": "connections closed with 1008: not reading",
    "dropped_handshake_timeout": "connections dropped: no handshake in time",
    "refused_cookie": "cookies that were not ours, replaced by a fresh one",
}

# Repeated log lines for one limit are held back this long, so that an
# attack shows up as a few lines with totals rather than one per connection.
LOG_INTERVAL = 10.0


class TokenBucket:
    """
    Allow C{rate} events per second on average, with bursts of C{burst}.
    """

    def __init__(self, rate: float, burst: float, clock: Any) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock.seconds()

    def take(self) -> bool:
        """
        Spend one token; C{False} (and nothing spent) if there is none.
        """
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Limits:
    """
    The configured limits (C{0} turns one off), the connections admitted per
    address, and a counter per limit (L{COUNTERS}).

    @ivar counters: limit name -> how many times it bit; ready to export.
    @ivar connections: WebSocket handshakes admitted and not yet closed.
    """

    def __init__(
        self,
        maxConnections: int = 0,
        maxConnectionsPerIp: int = 0,
        maxConnectionsPerSession: int = 32,
        maxMessagesPerSecond: float = 0,
        maxSendBuffer: int = 1048576,
        clock: Any = None,
        counters: Optional[Counters] = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.maxConnections = maxConnections
        self.maxConnectionsPerIp = maxConnectionsPerIp
        self.maxConnectionsPerSession = maxConnectionsPerSession
        self.maxMessagesPerSecond = maxMessagesPerSecond
        self.maxSendBuffer = maxSendBuffer
        self.clock = clock
        self.counters = counters if counters is not None else Counters()
        self.counters.declare(COUNTERS)
        self.connections = 0
        self._perIp: Dict[str, int] = {}
        self._warn = RateLimitedWarning(clock, LOG_INTERVAL, _log)

    def admit(self, address: str) -> Optional[Tuple[int, str]]:
        """
        Admit one more WebSocket from C{address}, or say why not.

        @return: C{None} if admitted (call L{release} when it goes), else
            the HTTP status and reason to refuse the handshake with.
        """
        if self.maxConnections and self.connections >= self.maxConnections:
            self.bite("refused_max_connections", address=address)
            return 503, "server is full"
        held = self._perIp.get(address, 0)
        if self.maxConnectionsPerIp and held >= self.maxConnectionsPerIp:
            self.bite("refused_per_ip", address=address)
            return 429, "too many connections from your address"
        self._perIp[address] = held + 1
        self.connections += 1
        return None

    def release(self, address: str) -> None:
        """
        A connection admitted for C{address} has gone.
        """
        held = self._perIp.get(address, 0)
        if held <= 1:
            self._perIp.pop(address, None)
        else:
            self._perIp[address] = held - 1
        self.connections = max(0, self.connections - 1)

    def connectionsFrom(self, address: str) -> int:
        """
        How many admitted connections C{address} holds.
        """
        return self._perIp.get(address, 0)

    def messageBucket(self) -> Optional[TokenBucket]:
        """
        A fresh per-connection message budget, or C{None} without a limit.
        The burst is one second's worth (at least 1): a browser that sends
        a few messages at once is fine, a loop that keeps sending is not.
        """
        if not self.maxMessagesPerSecond:
            return None
        rate = self.maxMessagesPerSecond
        return TokenBucket(rate, max(1.0, rate), self.clock)

    def bite(self, name: str, **fields: Any) -> None:
        """
        Count that limit C{name} bit, and say so in the log, at most once
        per L{LOG_INTERVAL} seconds for each limit (with how many times it
        bit since the last line).
        """
        total = self.counters.add(name)
        self._warn(
            name,
            "limit {limit}: {what} ({since} since the last report, {total} in all)",
            limit=name,
            what=COUNTERS.get(name, name),
            total=total,
            **fields,
        )
