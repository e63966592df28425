"""
C{docs/grafana-dashboard.json}: valid JSON, a panel for each thing an
operator watches, and every metric it queries one that C{/metrics} serves.
"""

from __future__ import annotations

import json
import os
import re

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from tests.common import HERE
from wsglue.api.metrics import GlueCollector
from wsglue.counters import Counters
from wsglue.registry import SessionRegistry

DASHBOARD = os.path.join(os.path.dirname(HERE), "docs", "grafana-dashboard.json")


def servedNames() -> set:
    registry = CollectorRegistry(auto_describe=False)
    # A close and an API request, so that their labelled families have lines.
    counters = Counters(["closes:1000", "api_requests:/api/stats:200"])
    registry.register(GlueCollector(counters, SessionRegistry()))  # type: ignore[arg-type]
    text = generate_latest(registry).decode("utf-8")
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


class DashboardTests(SynchronousTestCase):
    """
    The dashboard against the metrics.
    """

    def setUp(self) -> None:
        with open(DASHBOARD, encoding="utf-8") as f:
            self.dashboard = json.load(f)

    def test_panels(self) -> None:
        """
        Connections, sessions, message rates, closes by code, limit hits,
        API requests and the broadcast latency histogram each have a panel,
        with distinct ids.
        """
        titles = " | ".join(p["title"] for p in self.dashboard["panels"]).lower()
        for words in ("connections", "sessions", "message rates", "closes by code", "limit hits", "api requests"):
            self.assertIn(words, titles)
        self.assertIn("heatmap", [p["type"] for p in self.dashboard["panels"]])
        ids = [p["id"] for p in self.dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))

    def test_metricsExist(self) -> None:
        """
        Every metric a query names is one that C{/metrics} serves.
        """
        served = servedNames()
        queried = set()
        for panel in self.dashboard["panels"]:
            for target in panel["targets"]:
                queried.update(re.findall(r"wsglue_[a-z_]+", target["expr"]))
        self.assertTrue(queried)
        self.assertEqual(queried - served, set())
