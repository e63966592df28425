"""
The benchmark's tiny run (C{python -m bench --smoke}), so that the bench in
C{bench/} never rots.  It asserts only that the bench ran and reported every
figure; it never asserts how fast anything was.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import ROOT, CollectOutput, onceInCI, runBenchSmoke

SERVERS = [
    "wsglue",
    "wsglue-plain",
    "wsglue-cluster",
    "wsglue-cluster-plain",
    "websockets",
    "node",
    "wsglue-v1",
    "wsglue-cluster-v1-metrics",
]


class BenchSmokeTests(TestCase):
    """
    C{python -m bench --smoke} starts wsglue (one process, and two workers
    on a Redis), the Node peer and the websockets peer, drives them and
    writes its figures as JSON.
    """

    timeout = 240  # a first run installs the npm dependencies

    def setUp(self) -> None:
        onceInCI()
        # Fail, not skip: CI must notice a machine that cannot run the bench.
        for tool in ("node", "npm", "redis-server"):
            if shutil.which(tool) is None:
                self.fail(f"the bench needs {tool}, which is not on PATH")

    @inlineCallbacks
    def runSmoke(self) -> Any:
        """
        Run the smoke bench in a child process; return its exit status, its
        output and the JSON it wrote.
        """
        result = yield runBenchSmoke(self, "bench")
        return result

    @inlineCallbacks
    def test_smokeRunWritesEveryFigure(self) -> Any:
        """
        The smoke run exits 0 and writes one JSON file holding, for each of
        the four servers, every figure the bench promises as a number.
        """
        status, out, files, result = yield self.runSmoke()
        self.assertEqual(status, 0, out)
        self.assertEqual(len(files), 1, out)
        self.assertEqual(result["servers"], SERVERS)
        for server in SERVERS:
            expected: List[str] = result["expected"][server]
            self.assertIn("handshakes_per_s", expected)
            self.assertIn("echo5_rt_per_s", expected)
            self.assertIn("bcast10_last_ms", expected)
            figures = result["figures"][server]
            for name in expected:
                self.assertIsInstance(figures.get(name), (int, float), f"{server} {name}: {out}")
            self.assertEqual(
                set(result["ratios_to_node"][server]), set(figures), f"{server} has no ratio for some figure"
            )

    @inlineCallbacks
    def test_smokeRunReachesEveryClient(self) -> Any:
        """
        In the smoke run every server holds the idle sessions asked for,
        delivers each broadcast to every client without a miss and answers
        the echo clients; the table printed names each figure.
        """
        status, out, files, result = yield self.runSmoke()
        self.assertEqual(status, 0, out)
        for server in SERVERS:
            figures = result["figures"][server]
            self.assertEqual(figures["idle_sessions"], 20)
            for size in (5, 10):
                self.assertEqual(figures[f"bcast{size}_clients"], size)
                self.assertEqual(figures[f"bcast{size}_missed"], 0)
            self.assertEqual(figures["echo5_connections"], 5)
            if server == "wsglue-cluster":
                self.assertEqual(figures["big30_sessions"], 30)
                self.assertEqual(figures["bcast30_missed"], 0)
            self.assertGreater(figures["echo5_rt_per_s"], 0)
        for name in result["expected"]["wsglue"]:
            self.assertIn(f"| {name} ", out)
        self.assertIn("wsglue/node", out)


class InProcessBenchTests(TestCase):
    """
    C{python -m bench.inprocess}, tiny: it runs and reports both figures.
    """

    timeout = 60

    @inlineCallbacks
    def test_reportsBothPaths(self) -> Any:
        """
        It exits 0 and prints the cost per frame and per connection reached,
        having opened every connection asked for.
        """
        collect = CollectOutput()
        reactor.spawnProcess(
            collect,
            sys.executable,
            [sys.executable, "-m", "bench.inprocess", "--frames", "200", "--connections", "20"],
            env=dict(os.environ),
            path=ROOT,
        )
        status = yield collect.ended
        out = collect.output.decode("utf-8", "replace")
        self.assertEqual(status, 0, out)
        self.assertRegex(out, r"handshake: \d+\.\d us per opening handshake \(best of 3, 10 each\)")
        self.assertRegex(out, r"echo: \d+\.\d\d us per ping frame")
        self.assertRegex(out, r"broadcast: \d+\.\d\d us per connection \(best of 3, 20 connections\)")


class FailedStartTests(SynchronousTestCase):
    """
    A server the bench could not start leaves no process behind.
    """

    def test_clusterThatNeverGetsReady(self) -> None:
        """
        wsglue-cluster whose daemon exits at once (an unknown handler):
        the bench reports it, and its Redis is stopped too.
        """
        from bench.__main__ import BenchError, Server, parseArgs

        started: List[Server] = []

        class Recorded(Server):
            def _start(self, name: str, config: Any) -> None:
                started.append(self)
                Server._start(self, name, config)

        config = parseArgs(["--smoke", "--servers", "wsglue-cluster", "--handler", "no.such:Handler"])
        error = self.assertRaises(BenchError, Recorded, "wsglue-cluster", config)
        self.assertIn("exited", str(error))
        [server] = started
        self.assertEqual(len(server.extra), 1)
        for child in [server.child] + server.extra:
            self.assertIsNotNone(child.proc.poll(), child.name)


class ChildOutputTests(SynchronousTestCase):
    """
    The bench's children: their output is handed on line by line until
    they are made quiet, and kept for error messages either way.
    """

    def test_linesAcrossWritesThenQuiet(self) -> None:
        """
        A line written in two pieces is handed on whole; after C{quiet},
        lines are no longer handed on, and C{tail} still shows them.
        """
        from bench.__main__ import Child

        script = (
            "import sys\n"
            "for piece in ('sta', 'rted at x\\nnext\\n', 'after quiet\\n'):\n"
            "    sys.stdout.write(piece); sys.stdout.flush(); sys.stdin.readline()\n"
        )
        child = Child("probe", [sys.executable, "-c", script], stdin=True)
        self.addCleanup(child.stop)
        assert child.proc.stdin is not None

        def proceed() -> None:
            child.proc.stdin.write(b"go\n")
            child.proc.stdin.flush()

        # The first piece is read on its own before the rest is written.
        pause = threading.Event()
        for _ in range(1000):
            if child._tailSize:
                break
            pause.wait(0.01)
        self.assertEqual(child._tailSize, 3)
        proceed()
        self.assertEqual(child.waitForLine("started", 10), "started at x\n")
        self.assertEqual(child.waitForLine("next", 10), "next\n")
        child.quiet()
        proceed()
        proceed()
        child.proc.wait(10)
        child._reader.join(10)
        # Only the end-of-output mark was handed on after quiet.
        self.assertEqual(child.lines.get(timeout=1), "")
        self.assertEqual(child.tail(), "started at x\nnext\nafter quiet\n")
