"""
The resume storm's tiny run (C{python -m bench.storm --smoke}), so that the
storm bench never rots: every scenario runs, every session resumes with
its owed messages, none missing or twice.  It never asserts how fast.
"""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import onceInCI, runBenchSmoke


class StormSmokeTests(TestCase):
    """
    C{python -m bench.storm --smoke}: 200 sessions, 2 owed messages each,
    in each scenario.
    """

    timeout = 240  # a first run installs the npm dependencies

    def setUp(self) -> None:
        onceInCI()
        # Fail, not skip: CI must notice a machine that cannot run it.
        for tool in ("node", "redis-server"):
            if shutil.which(tool) is None:
                self.fail(f"the storm bench needs {tool}, which is not on PATH")

    @inlineCallbacks
    def test_smoke(self) -> Any:
        """
        The smoke run exits 0 and writes one JSON file: in every scenario,
        every session recovered and received exactly its owed messages.
        """
        status, out, files, result = yield runBenchSmoke(self, "bench.storm")
        self.assertEqual(status, 0, out)
        self.assertEqual(len(files), 1, out)
        runs = result["runs"]
        self.assertEqual([r["scenario"] for r in runs], ["cluster-term", "cluster-kill", "single-drop"])
        for r in runs:
            sessions = r["sessions"]
            self.assertEqual(
                (r["recovered"], r["complete"], r["unrecovered"], r["incomplete"]), (sessions, sessions, 0, 0), r
            )
            self.assertEqual((r["missing"], r["duplicated"], r["unexpected"], r["offset_gaps"]), (0, 0, 0, 0), r)
            self.assertEqual(r["post"]["no_stream"], 0, r)
            for figure in ("welcome_ms", "complete_ms"):
                self.assertIsInstance(r[figure]["p99"], float, r)
        self.assertEqual(runs[0]["close_codes"], {"1001": 200})
