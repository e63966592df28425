"""
The ingress benchmark's tiny run (C{python -m bench.ingress --smoke}), so
that it never rots.  It checks that the run reported every figure and that
nothing sent through the API or the stream was lost or doubled; it never
asserts how fast anything was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Dict

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import ROOT, CollectOutput, onceInCI

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
        output = os.path.abspath(self.mktemp())
        os.makedirs(output)
        collect = CollectOutput()
        transport = reactor.spawnProcess(
            collect,
            sys.executable,
            [sys.executable, "-m", "bench.ingress", "--smoke", "--output", output],
            env=dict(os.environ),
            path=ROOT,
        )

        def stop() -> Deferred:
            # SIGTERM makes the bench stop the daemons and the driver it started.
            if not collect.ended.called:
                transport.signalProcess("TERM")
                killer = reactor.callLater(20, lambda: collect.ended.called or transport.signalProcess("KILL"))
                collect.ended.addBoth(lambda r: killer.active() and killer.cancel())
            return collect.ended

        self.addCleanup(stop)
        status = yield collect.ended
        out = collect.output.decode("utf-8", "replace")
        self.assertEqual(status, 0, out)
        files = os.listdir(output)
        self.assertEqual(len(files), 1, out)
        with open(os.path.join(output, files[0])) as f:
            result: Dict[str, Any] = json.load(f)
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
