"""
The ingress benchmark's tiny run (C{python -m bench.ingress --smoke}), so
that it never rots.  It checks that the run reported every figure and that
nothing sent through the API or the stream was lost or doubled; it never
asserts how fast anything was.
"""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import onceInCI, runBenchSmoke

DAEMONS = ["wsglue", "wsglue-workers2"]
FIGURES = [
    "sessions",
    "publish_requests_per_s",
    "publish_p50_ms",
    "publish_p99_ms",
    "batch_messages_per_s",
    "batch_p99_ms",
    "burst_entries_per_s",
    "burst_last_ms",
    "steady_p50_ms",
    "steady_p99_ms",
    "steady_max_ms",
    "steady_backlog_at_end",
    "publish_server_cpu_pct",
    "steady_redis_cpu_pct",
]


class IngressSmokeTests(TestCase):
    """
    C{python -m bench.ingress --smoke} starts wsglue (one process, then two
    workers on a Redis) with the API and a stream source, sends through
    both, and writes its figures as JSON.
    """

    timeout = 120  # a first run installs the npm dependencies

    def setUp(self) -> None:
        onceInCI()
        # Fail, not skip: CI must notice a machine that cannot run it.
        for tool in ("node", "redis-server"):
            if shutil.which(tool) is None:
                self.fail(f"the ingress bench needs {tool}, which is not on PATH")

    @inlineCallbacks
    def test_smokeRunLosesNothing(self) -> Any:
        """
        The smoke run exits 0, prints the table, and writes one JSON file in
        which, for both daemons, every figure is a number; every message
        posted (one by one or in batches) and every stream entry reached its
        client exactly once, with no error answer and no dead entry.
        """
        status, out, files, result = yield runBenchSmoke(self, "bench.ingress")
        self.assertEqual(status, 0, out)
        self.assertEqual(len(files), 1, out)
        self.assertEqual(list(result["figures"]), DAEMONS)
        for daemon in DAEMONS:
            figures = result["figures"][daemon]
            for name in FIGURES:
                self.assertIsInstance(figures.get(name), (int, float), f"{daemon} {name}: {out}")
            self.assertEqual(figures["sessions"], 20)
            for phase in ("publish", "batch"):
                self.assertGreater(figures[f"{phase}_sent"], 0, daemon)
                self.assertEqual(figures[f"{phase}_errors"], 0, f"{daemon} {phase}")
                self.assertEqual(figures[f"{phase}_received"], figures[f"{phase}_sent"], f"{daemon} {phase}")
                self.assertEqual(figures[f"{phase}_duplicates"], 0, f"{daemon} {phase}")
            # One connection per session: delivered counts each message once.
            self.assertEqual(figures["publish_delivered"], figures["publish_sent"], daemon)
            self.assertEqual(figures["burst_entries"], 500)
            self.assertEqual(figures["steady_entries"], 500)
            for phase in ("burst", "steady"):
                self.assertEqual(figures[f"{phase}_missing"], 0, f"{daemon} {phase}")
                self.assertEqual(figures[f"{phase}_duplicates"], 0, f"{daemon} {phase}")
            self.assertEqual(figures["source_dead"], 0, daemon)
            self.assertEqual(figures["redis_errors"], 0, daemon)
        self.assertIn("| publish_requests_per_s ", out)
        self.assertIn("wsglue-workers2/wsglue", out)
