"""
The tiny run of the reconnect comparison (C{python -m bench.recovery
--smoke}): wsglue's resume and Socket.IO's connection state recovery through
the same scripted drops, so that C{bench/recovery} never rots.  It asserts
what wsglue promises (SPEC §12: every reconnect recovered, nothing lost,
nothing twice); for Socket.IO only that every scenario ran.  It never
asserts how fast anything was.
"""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import onceInCI, runBenchSmoke

SYSTEMS = ["wsglue", "wsglue-redis", "socketio", "socketio-redis"]
SCENARIOS = ["a", "b", "c", "d", "e", "f"]


class RecoverySmokeTests(TestCase):
    timeout = 240  # a first run installs the npm packages (npm ci)

    def setUp(self) -> None:
        onceInCI()
        # Fail, not skip: CI must notice a machine that cannot run it.
        for tool in ("node", "npm", "redis-server"):
            if shutil.which(tool) is None:
                self.fail(f"bench.recovery needs {tool}, which is not on PATH")

    @inlineCallbacks
    def test_smokeRun(self) -> Any:
        """
        The smoke run exits 0 and writes one JSON file with a result for
        every system and scenario (none for the in-memory systems' scenario
        d); every wsglue reconnect was recovered with nothing lost or
        doubled, except in e (a gap longer than the history: not recovered,
        nothing doubled), and every client ran without an error.
        """
        status, out, files, written = yield runBenchSmoke(self, "bench.recovery")
        self.assertEqual(status, 0, out)
        self.assertEqual(len(files), 1, out)
        results = written["results"]
        self.assertEqual(sorted(results), sorted(SYSTEMS))
        config = written["config"]
        for system in SYSTEMS:
            self.assertEqual(sorted(results[system]), SCENARIOS, system)
            for scenario in SCENARIOS:
                r = results[system][scenario]
                if scenario == "d" and not system.endswith("-redis"):
                    self.assertIsNone(r, system)
                    continue
                where = f"{system} {scenario}: {r}"
                self.assertEqual(r["errors"], 0, where)
                clients = config["reconnecting_clients"] if scenario in "be" else config["clients"]
                self.assertEqual(r["clients"], clients, where)
                each = config["reconnects"] if scenario == "b" else 1
                self.assertEqual(r["reconnects"], clients * each, where)
                self.assertEqual(r["recovered"] + r["notRecovered"], r["reconnects"], where)
                if system.startswith("wsglue") and scenario == "e":
                    # The gap is longer than --history-size (100): told so,
                    # and nothing replayed (never a partial replay).
                    self.assertEqual((r["recovered"], r["duplicated"]), (0, 0), where)
                    self.assertGreater(r["lost"], 0, where)
                elif system.startswith("wsglue"):
                    self.assertEqual((r["recovered"], r["lost"], r["duplicated"]), (r["reconnects"], 0, 0), where)
                if scenario == "c":
                    # Nobody had received anything when it dropped.
                    self.assertEqual(r["clientsWithMessageBeforeDrop"], 0, where)
                self.assertIn(f"| {system} ", out)
