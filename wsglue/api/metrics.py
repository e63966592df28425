"""
C{GET /metrics}: the daemon's counters and gauges in Prometheus's text
format, read at scrape time from the one L{Counters} of the service and
from the registry (L{GlueCollector}); nothing is counted twice.

Labelled counters are kept in L{Counters} under C{name:label} (or
C{name:label1:label2}): C{handshakes:accepted}, C{closes:1000},
C{api_requests:/api/broadcast:200}.  The broadcast histogram is kept there
too, a counter per bucket (L{wsglue.counters.observeBroadcast}).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource

from wsglue.api.http import errorBody
from wsglue.counters import BROADCAST_BUCKETS, Counters
from wsglue.limits import COUNTERS as LIMITS
from wsglue.registry import SessionRegistry

# What the other workers left (see wsglue.api.shared).
Others = Callable[[], List[Dict[str, Any]]]

# The counters that say something went wrong with Redis.
REDIS_ERRORS = (
    "redis_publish_failed",
    "redis_publish_dropped",
    "redis_presence_failed",
    "redis_bad_message",
    "redis_connect_failed",
)


def _labelled(counters: Counters, name: str) -> Iterator[Tuple[List[str], int]]:
    prefix = name + ":"
    for key, value in list(counters.items()):
        if key.startswith(prefix):
            yield key[len(prefix) :].split(":"), value


def _labelledCounter(
    counters: Counters, metric: str, what: str, name: str, labels: List[str], always: List[List[str]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(metric, what, labels=labels)
    seen: Dict[Tuple[str, ...], int] = {tuple(values): 0 for values in always}
    for values, count in _labelled(counters, name):
        if len(values) == len(labels):
            seen[tuple(values)] = count
    for key, count in sorted(seen.items()):
        family.add_metric(list(key), count)
    return family


class GlueCollector:
    """
    A prometheus_client collector reading C{counters} and C{registry} when
    scraped.
    """

    def __init__(self, counters: Counters, registry: SessionRegistry, others: Optional[Others] = None) -> None:
        self.counters = counters
        self.registry = registry
        # With --workers: the other workers' latest numbers (wsglue.api.shared).
        self.others = others

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        connections = self.registry.connectionCount
        sessions = len(self.registry)
        if self.others is not None:
            c = Counters()
            c.update(self.counters)
            for other in self.others():
                for name, count in other.get("counters", {}).items():
                    c[name] += int(count)
                connections += int(other.get("connections", 0))
                sessions += int(other.get("sessions", 0))
        yield GaugeMetricFamily("wsglue_connections", "Open WebSocket connections.", value=connections)
        yield GaugeMetricFamily(
            "wsglue_sessions",
            "Sessions with a connection (with --workers, summed over the workers).",
            value=sessions,
        )
        yield _labelledCounter(
            c,
            "wsglue_handshakes",
            "WebSocket handshakes, by result.",
            "handshakes",
            ["result"],
            [["accepted"], ["refused"]],
        )
        for name, what in (
            ("messages_received", "Messages received from WebSocket clients."),
            ("messages_sent", "Messages sent to WebSocket clients (one per connection reached)."),
            ("bytes_received", "Payload bytes of the messages received."),
            ("bytes_sent", "Payload bytes of the messages sent."),
        ):
            yield CounterMetricFamily(f"wsglue_{name}", what, value=c[name])
        yield _labelledCounter(
            c, "wsglue_closes", "WebSocket connections closed, by close code.", "closes", ["code"], []
        )
        limits = CounterMetricFamily(
            "wsglue_limit_hits", "Times a limit refused or closed a connection, by limit.", labels=["limit"]
        )
        for name in LIMITS:
            limits.add_metric([name], c[name])
        yield limits
        yield _labelledCounter(
            c,
            "wsglue_resumes",
            "wsglue.v1 resumes, by whether the missed messages were replayed.",
            "resumes",
            ["recovered"],
            [["true"], ["false"]],
        )
        yield _labelledCounter(
            c,
            "wsglue_api_requests",
            "HTTP API requests answered, by route and status.",
            "api_requests",
            ["route", "status"],
            [],
        )
        yield _labelledCounter(
            c,
            "wsglue_source_entries",
            "Entries read from stream sources, by result.",
            "source_entries",
            ["result"],
            [["delivered"], ["dead"]],
        )
        yield CounterMetricFamily(
            "wsglue_redis_errors",
            "Redis failures: publications failed or dropped, presence updates failed, bad messages, failed connects.",
            value=sum(c[name] for name in REDIS_ERRORS),
        )
        buckets = []
        cumulative = 0
        for bound in BROADCAST_BUCKETS:
            cumulative += c[f"broadcast_seconds_bucket:{bound}"]
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", c["broadcast_seconds_count"]))
        yield HistogramMetricFamily(
            "wsglue_broadcast_seconds",
            "Time to deliver a broadcast to this process's connections.",
            buckets=buckets,
            sum_value=c["broadcast_seconds_sum_ns"] / 1e9,
        )


class MetricsResource(Resource):
    """
    C{GET /metrics}, without a key.
    """

    isLeaf = True

    def __init__(self, counters: Counters, registry: SessionRegistry, others: Optional[Others] = None) -> None:
        Resource.__init__(self)
        self.counters = counters
        self.collectors = CollectorRegistry(auto_describe=False)
        self.collectors.register(GlueCollector(counters, registry, others))  # type: ignore[arg-type]

    def render(self, request: Any) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            return self.render_GET(request)
        self.counters.add("api_requests:/metrics:405")
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"GET, HEAD")
        request.setHeader(b"Content-Type", b"application/json")
        return errorBody("method not allowed")

    def render_GET(self, request: Any) -> bytes:
        self.counters.add("api_requests:/metrics:200")
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return bytes(generate_latest(self.collectors))
