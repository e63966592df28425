"""
Tests for C{GET /metrics}: scraped from a real service after known
traffic and parsed with prometheus_client's own parser, on the levered
path and on the plain one (each counts the same).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.api_client import serveApi
from tests.common import connect, cookieValue, forceLevers, waitFor
from wsglue.counters import Counters, observeBroadcast
from wsglue.levers import Levers
from wsglue.levers.protocol import LeveredProtocol
from wsglue.protocol import payloadSize
from wsglue.registry import prepare

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """
    Every sample of a scrape: C{(name, sorted labels) -> value}.
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsMixin:
    """
    The same traffic and the same counts on either path.
    """

    levered: bool

    def serve(self) -> Any:
        raise NotImplementedError

    @inlineCallbacks
    def scrape(self, api: Any) -> Any:
        response, body = yield api.request("GET", "/metrics", key=None)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        return parse(body.decode("utf-8"))

    @inlineCallbacks
    def test_countsMatchTraffic(self) -> Any:
        """
        After known traffic (handshakes accepted and refused, messages both
        ways, an API send, a broadcast and a close with 4000, API errors)
        every count in the scrape is what that traffic makes.
        """
        api = self.serve()
        a = yield connect(self, api.port)
        sid = cookieValue(a.setCookie)
        b = yield connect(self, api.port, headers={"Cookie": f"CookieName={sid}"})
        c = yield connect(self, api.port)
        # Refused: an Origin from elsewhere.
        yield self.assertFailure(connect(self, api.port, headers={"Origin": "http://elsewhere.example"}), Exception)
        if self.levered:
            self.assertIsInstance(api.registry.connections(sid)[0], LeveredProtocol)
        else:
            self.assertNotIsInstance(api.registry.connections(sid)[0], LeveredProtocol)
        a.send("ping")
        self.assertEqual((yield a.nextMessage()), "pong")
        c.send(b"\x01\x02")  # binary: closed with 1003
        yield c.closed
        yield api.json("POST", f"/api/sessions/{sid}/messages", "héllo")  # 6 bytes, 2 tabs
        yield api.json("POST", "/api/broadcast", b"\x00" * 200, contentType="application/octet-stream")
        for tab in (a, b):
            yield tab.nextMessage()
        yield a.nextMessage()  # and the broadcast: a got pong, héllo, the broadcast
        yield b.nextMessage()
        yield api.json("DELETE", f"/api/sessions/{sid}?code=4000")
        yield a.closed
        yield b.closed
        yield api.json("GET", "/api/nothing")
        yield api.json("GET", "/api/sessions", key=None)
        yield waitFor(lambda: api.registry.connectionCount == 0)
        s = yield self.scrape(api)
        self.assertEqual(s[("wsglue_connections", ())], 0)
        self.assertEqual(s[("wsglue_sessions", ())], 0)
        self.assertEqual(s[("wsglue_handshakes_total", (("result", "accepted"),))], 3)
        self.assertEqual(s[("wsglue_handshakes_total", (("result", "refused"),))], 1)
        self.assertEqual(s[("wsglue_messages_received_total", ())], 2)
        self.assertEqual(s[("wsglue_bytes_received_total", ())], 4 + 2)
        # pong; héllo to 2 tabs; the broadcast to 2 tabs.
        self.assertEqual(s[("wsglue_messages_sent_total", ())], 5)
        self.assertEqual(s[("wsglue_bytes_sent_total", ())], 4 + 2 * 6 + 2 * 200)
        self.assertEqual(s[("wsglue_closes_total", (("code", "4000"),))], 2)
        self.assertEqual(s[("wsglue_closes_total", (("code", "1003"),))], 1)
        self.assertEqual(s[("wsglue_limit_hits_total", (("limit", "closed_message_rate"),))], 0)
        self.assertEqual(s[("wsglue_resumes_total", (("recovered", "true"),))], 0)
        self.assertEqual(s[("wsglue_source_entries_total", (("result", "delivered"),))], 0)
        self.assertEqual(s[("wsglue_redis_errors_total", ())], 0)
        requests = {labels: value for (name, labels), value in s.items() if name == "wsglue_api_requests_total"}
        self.assertEqual(
            requests,
            {
                (("route", "/api/sessions/{sid}/messages"), ("status", "200")): 1,
                (("route", "/api/broadcast"), ("status", "200")): 1,
                (("route", "/api/sessions/{sid}"), ("status", "200")): 1,
                (("route", "other"), ("status", "404")): 1,
                (("route", "/api/sessions"), ("status", "401")): 1,
                # This scrape itself.
                (("route", "/metrics"), ("status", "200")): 1,
            },
        )
        self.assertEqual(s[("wsglue_broadcast_seconds_count", ())], 1)
        self.assertEqual(s[("wsglue_broadcast_seconds_bucket", (("le", "+Inf"),))], 1)
        self.assertGreater(s[("wsglue_broadcast_seconds_sum", ())], 0)
        s = yield self.scrape(api)
        self.assertEqual(s[("wsglue_api_requests_total", (("route", "/metrics"), ("status", "200")))], 2)

    @inlineCallbacks
    def test_gauges(self) -> Any:
        """
        The gauges are the registry's counts at scrape time.
        """
        api = self.serve()
        a = yield connect(self, api.port)
        sid = cookieValue(a.setCookie)
        yield connect(self, api.port, headers={"Cookie": f"CookieName={sid}"})
        yield connect(self, api.port)
        s = yield self.scrape(api)
        self.assertEqual(s[("wsglue_connections", ())], 3)
        self.assertEqual(s[("wsglue_sessions", ())], 2)

    @inlineCallbacks
    def test_noKeyNeeded(self) -> Any:
        """
        C{/metrics} needs no key, and answers only GET (and HEAD).
        """
        api = self.serve()
        response, _ = yield api.request("GET", "/metrics", key=None)
        self.assertEqual(response.code, 200)
        status, body, response = yield api.json("POST", "/metrics", "x", key=None)
        self.assertEqual(status, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        self.assertIn("error", body)


class LeveredMetricsTests(MetricsMixin, TestCase):
    """
    On the levered path (its own frame reader, sends and handshake).
    """

    levered = True
    timeout = 30

    def serve(self) -> Any:
        forceLevers(self)
        return serveApi(self)


class PlainMetricsTests(MetricsMixin, TestCase):
    """
    On the plain path (Autobahn's own hooks).
    """

    levered = False
    timeout = 30

    def serve(self) -> Any:
        self.patch(Levers, "_current", None)
        return serveApi(self, "--no-levers")


class HistogramTests(SynchronousTestCase):
    """
    The broadcast histogram and the payload sizes, in memory.
    """

    def test_buckets(self) -> None:
        """
        An observation counts in the first bucket whose bound it does not
        exceed; the sum is kept in nanoseconds.
        """
        counters = Counters()
        observeBroadcast(counters, 0.0003)
        observeBroadcast(counters, 10)
        self.assertEqual(counters["broadcast_seconds_bucket:0.0005"], 1)
        self.assertEqual(counters["broadcast_seconds_count"], 2)
        self.assertEqual(counters["broadcast_seconds_sum_ns"], 10_000_300_000)

    def test_payloadSize(self) -> None:
        """
        The payload of a prepared frame, whatever the size of its header.
        """
        for size in (0, 1, 125, 126, 65535, 65536, 70000):
            self.assertEqual(payloadSize(prepare(b"x" * size)), size)
