"""
Echo throughput of C{--workers 1} against C{--workers 2} (issue 5)::

    python -m bench.workers                       # 200 and 1000 connections
    python -m bench.workers --connections 500 --seconds 10 --repeat 3

For each configuration — one process without Redis, C{--workers 1 --redis},
C{--workers 2 --redis} — it starts C{twistd -n wsglue} as a user would (with
a private redis-server on a free loopback port), then drives it with the
bench's Node load generators (C{bench/load/loader.js}: N raw-socket clients
in a closed loop, C{ping} → C{pong} → C{ping} …) and prints round trips per
second and the p50/p99 latency, median over the repetitions, plus the JSON.

Only the processes started here are stopped, by their PID, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LOADER = os.path.join(BENCH, "load", "loader.js")
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

sys.path.insert(0, ROOT)
from tests.redis_server import RedisServer  # noqa: E402


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: List[float], p: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


class Daemon:
    """
    C{twistd -n wsglue ARGS}, ready once it said where it listens and every
    worker accepts.
    """

    def __init__(self, args: List[str], workers: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.logPath = os.path.join(BENCH, f".workers-bench-{os.getpid()}.log")
        self.log = open(self.logPath, "w+b")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "--pidfile=", "-n", "wsglue", *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        want = "subscribed at" if "--redis" in args else "started websocket server at"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.output()
            if text.count(want) >= workers and "started websocket server at" in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("wsglue did not start:\n" + self.output())

    def output(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        os.unlink(self.logPath)


def echo(port: int, connections: int, loaders: int, seconds: float, warmup: float) -> Dict[str, Any]:
    """
    Run the closed-loop echo with C{loaders} Node processes, each on its own
    source address; return round trips per second and latency.
    """
    procs = []
    try:
        for i in range(loaders):
            procs.append(
                subprocess.Popen(
                    ["node", LOADER, "127.0.0.1", str(port), f"127.0.0.{2 + i}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        shares = [connections // loaders + (1 if i < connections % loaders else 0) for i in range(loaders)]
        for proc, share in zip(procs, shares):
            proc.stdin.write(json.dumps({"cmd": "echo", "n": share, "seconds": seconds, "warmup": warmup}) + "\n")
            proc.stdin.flush()
        count, elapsed, opened, lat = 0, 0.0, 0, []
        for proc in procs:
            reply: Dict[str, Any] = {}
            for _ in range(100):  # skip any other announcement
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a load generator exited")
                reply = json.loads(line)
                if reply.get("ev") == "echo":
                    break
            count += reply["count"]
            elapsed = max(elapsed, reply["seconds"])
            opened += reply["opened"]
            lat.extend(reply["lat"])
        return {
            "connections": opened,
            "rt_per_s": round(count / elapsed) if elapsed else None,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loaders", type=int, default=2, help="Node load processes")
    config = p.parse_args(argv)

    setups = [("1 process, no Redis", 1, False), ("--workers 1 --redis", 1, True), ("--workers 2 --redis", 2, True)]
    results: Dict[str, Dict[int, List[Dict[str, Any]]]] = {name: {} for name, _, _ in setups}
    with RedisServer() as redis:
        for _ in range(config.repeat):
            for name, workers, useRedis in setups:  # interleaved: A B C A B C
                port = freePort()
                args = [
                    "--port",
                    f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                    "--broadcast-interval",
                    "0",
                    "--ping-interval",
                    "0",
                ]
                if useRedis:
                    args += ["--redis", redis.url, "--workers", str(workers)]
                daemon = Daemon(args, workers)
                try:
                    for n in config.connections:
                        r = echo(port, n, config.loaders, config.seconds, config.warmup)
                        results[name].setdefault(n, []).append(r)
                        print(
                            f"{name:22} {n:6} conns: {r['rt_per_s']} rt/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms",
                            flush=True,
                        )
                finally:
                    daemon.stop()

    print(
        f"\nmedians over {config.repeat} runs, {os.cpu_count()} CPUs, "
        f"{config.loaders} Node load processes on the same machine:"
    )
    print(f"{'setup':22} {'conns':>6} {'rt/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    summary: Dict[str, Any] = {}
    for name, _, _ in setups:
        for n, runs in results[name].items():
            med = {
                k: statistics.median(r[k] for r in runs if r[k] is not None) for k in ("rt_per_s", "p50_ms", "p99_ms")
            }
            summary[f"{name} @ {n}"] = med
            print(f"{name:22} {n:6} {med['rt_per_s']:8.0f} {med['p50_ms']:8.2f} {med['p99_ms']:8.2f}")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
