"""
The resume storm's tiny run (C{python -m bench.storm --smoke}), so that the
storm bench never rots: every scenario runs, every session resumes with
its owed messages, none missing or twice.  It never asserts how fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import ROOT, CollectOutput, onceInCI


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
        output = os.path.abspath(self.mktemp())
        os.makedirs(output)
        collect = CollectOutput()
        transport = reactor.spawnProcess(
            collect,
            sys.executable,
            [sys.executable, "-m", "bench.storm", "--smoke", "--output", output],
            env=dict(os.environ),
            path=ROOT,
        )

        def stop() -> Deferred:
            # SIGTERM makes the bench stop what it started.
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
            result = json.load(f)
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
