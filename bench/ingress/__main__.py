"""
The ingress benchmark: messages from backends into wsglue, one command::

    python -m bench.ingress            # the full run (a few minutes)
    python -m bench.ingress --smoke    # a tiny run (seconds), as the tests do

For each daemon (one process; then C{--workers N --redis}), started as a
user would start it with C{--api} and a C{--source} reading a Redis Stream
on a private C{redis-server}, one Node process (C{bench/ingress/driver.js})
holds plain WebSocket clients, one session each, and measures:

- B{publish}: C{POST /api/sessions/{sid}/messages} to random sessions from
  a few keep-alive HTTP/1.1 connections in a closed loop: requests/s, the
  messages delivered (as the answers count them) and received by the
  clients, and the time from sending the POST to the message's arrival on
  its WebSocket (p50/p99/max);
- B{batch}: the same with C{POST /api/batch} of 1,000 messages: messages/s;
- B{burst}: a backlog of entries appears in the stream at once (written to
  another key with the daemon's group, then C{RENAME}d onto the stream):
  entries/s until the clients received them all;
- B{steady}: a producer C{XADD}s at a steady rate (10,000/s) for a while;
  each entry's lag from its C{XADD} to its arrival (p50/p99/max), whether
  any is missing, and the group's backlog when the producer stops.

Every latency is taken on one clock: the driver sends the load and holds
the clients.  Figures go to C{bench/results/ingress-<timestamp>.json} and
are printed as one table, the two daemons side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

from bench.__main__ import (
    LOAD,
    ROOT,
    TWISTD,
    BenchError,
    Child,
    CpuMeter,
    Loader,
    cpuSeconds,
    descendants,
    ensureNodeModules,
    freePort,
    machine,
    runMain,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "driver.js")
STREAM = "bench:ingress"
PHASES = ("publish", "batch", "burst", "steady")
GROUP = "gateways"


class Driver(Loader):
    """
    The Node driver, spoken to with one JSON line per command as the
    bench's loaders are (their C{send}, C{expect} and C{stop}).
    """

    def __init__(self, wsPort: int, apiPort: int, key: str, redisPort: int) -> None:
        Child.__init__(
            self,
            "driver",
            ["node", DRIVER, str(wsPort), str(apiPort), key, str(redisPort), STREAM],
            stdin=True,
        )
        self.pending: List[Dict[str, Any]] = []
        self.expect("ready", 20)

    def command(self, timeout: float, **command: Any) -> Dict[str, Any]:
        self.send(**command)
        answer = self.expect(command["cmd"] if command["cmd"] != "open" else "opened", timeout)
        if answer.get("ev") == "error":
            raise BenchError(f"driver: {answer['error']}")
        return answer


class Daemon:
    """
    A private Redis and wsglue on it: one process, or C{workers} with
    C{--redis}; the API on its own port and a C{--source} on the stream.
    """

    def __init__(self, name: str, workers: int, folder: str, profile: Optional[str] = None, tree: str = ROOT) -> None:
        self.name = name
        self.tree = tree
        self.workers = workers
        self.profile = profile
        self.port, self.apiPort, self.redisPort = freePort(), freePort(), freePort()
        self.key = "bench-" + os.urandom(12).hex()
        self.keyFile = os.path.join(folder, f"{name}.keys")
        with open(self.keyFile, "w") as f:
            f.write(self.key + "\n")
        os.chmod(self.keyFile, 0o600)
        self.redis: Optional[Child] = None
        self.child: Optional[Child] = None
        self.argv: List[str] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.redis = Child(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redisPort),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        self.redis.waitForLine("Ready to accept connections", 20)
        self.redis.quiet()
        redisURL = f"redis://127.0.0.1:{self.redisPort}/0"
        self.argv = [
            "--pidfile=",
            "-n",
            "wsglue",
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
            "--api",
            f"tcp:{self.apiPort}:interface=127.0.0.1",
            "--api-key-file",
            self.keyFile,
            "--ping-interval",
            "0",
            "--broadcast-interval",
            "0",
            # A batch of 1,000 messages to 40-hex sessions is over the
            # default 64 KiB, which bounds the batch's body too.
            "--max-message-size",
            "1048576",
            "--source",
            f"redis-stream://127.0.0.1:{self.redisPort}/0?stream={STREAM}&group={GROUP}",
        ]
        if self.workers > 1:
            self.argv += ["--workers", str(self.workers), "--redis", redisURL]
        env = dict(os.environ)
        env["PYTHONPATH"] = self.tree + os.pathsep + env.get("PYTHONPATH", "")
        # `python -c` would put its working folder (this checkout) first on
        # sys.path, before the tree under test (--wsglue-tree).
        env["PYTHONSAFEPATH"] = "1"
        if self.profile:
            # cProfile in each process, from start to exit (sitecustomize).
            env["PYTHONPATH"] = os.path.join(HERE, "profiling") + os.pathsep + env["PYTHONPATH"]
            env["WSGLUE_BENCH_PROFILE"] = self.profile
        self.child = Child(self.name, [sys.executable, "-c", TWISTD, *self.argv], env=env)
        self.child.waitForLine("started websocket server at", 30)
        for _ in range(self.workers):
            # Each reader says so once its group exists (the last thing a
            # process does on start-up).
            self.child.waitForLine("reading as consumer", 30)
        self.child.quiet()

    def pids(self) -> List[int]:
        return descendants(self.child.pid) if self.child is not None else []

    def redisPids(self) -> List[int]:
        return [self.redis.pid] if self.redis is not None else []

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        if self.redis is not None:
            self.redis.stop()


def metric(apiPort: int, name: str) -> Dict[str, float]:
    """
    The samples of one metric from C{/metrics}, by their labels.
    """
    from urllib.request import urlopen

    out: Dict[str, float] = {}
    with urlopen(f"http://127.0.0.1:{apiPort}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key[len(name) :]] = float(value)
    return out


class Run:
    """
    One daemon driven through every phase.
    """

    def __init__(self, daemon: Daemon, config: argparse.Namespace) -> None:
        self.daemon = daemon
        self.config = config
        self.driver = Driver(daemon.port, daemon.apiPort, daemon.key, daemon.redisPort)
        self.figures: Dict[str, Any] = {}
        self.raw: Dict[str, Any] = {}

    @contextmanager
    def measured(self, label: str) -> Iterator[None]:
        meter = CpuMeter(self.daemon.pids, lambda: [self.driver.pid])
        t0, r0 = time.monotonic(), cpuSeconds(self.daemon.redisPids())
        try:
            yield
        finally:
            shares = meter.shares()
            self.figures[f"{label}_server_cpu_pct"] = shares["server_cpu_pct"]
            self.figures[f"{label}_driver_cpu_pct"] = shares["load_cpu_pct"]
            wall = max(time.monotonic() - t0, 1e-6)
            self.figures[f"{label}_redis_cpu_pct"] = 100 * (cpuSeconds(self.daemon.redisPids()) - r0) / wall

    def run(self) -> Dict[str, Any]:
        c = self.config
        opened = self.driver.command(60 + c.sessions / 50, cmd="open", n=c.sessions, concurrency=32)
        self.figures["sessions"] = opened["held"]
        if opened["held"] < c.sessions:
            raise BenchError(f"{self.daemon.name}: only {opened['held']} of {c.sessions} clients opened")
        for phase in c.phases:
            with self.measured(phase):
                getattr(self, phase)()
        errors = metric(self.daemon.apiPort, "wsglue_redis_errors_total")
        self.figures["redis_errors"] = sum(errors.values())
        dead = metric(self.daemon.apiPort, "wsglue_source_entries_total")
        self.figures["source_dead"] = dead.get('{result="dead"}', 0.0)
        return self.figures

    def publish(self) -> None:
        c = self.config
        r = self.driver.command(
            c.seconds + c.drain + 60,
            cmd="publish",
            seconds=c.seconds,
            connections=c.connections,
            size=c.size,
            capacity=int(c.seconds * 50000) + 1000,
            drain=c.drain,
        )
        self._closedLoop("publish", r)
        self.figures["publish_requests_per_s"] = r["requests_per_s"]

    def batch(self) -> None:
        c = self.config
        r = self.driver.command(
            c.seconds + c.drain + 60,
            cmd="batch",
            seconds=c.seconds,
            connections=c.batch_connections,
            messages=c.batch,
            size=c.size,
            capacity=int(c.seconds * 400000) + 2 * c.batch * c.batch_connections,
            drain=c.drain,
        )
        self._closedLoop("batch", r)
        self.figures["batch_requests_per_s"] = r["requests_per_s"]
        self.figures["batch_messages_per_s"] = r["messages_per_s"]

    def burst(self) -> None:
        c = self.config
        r = self.driver.command(
            c.burst_drain + 120, cmd="burst", n=c.burst, size=c.size, group=GROUP, drain=c.burst_drain
        )
        self.raw["burst"] = r
        self.figures["burst_entries"] = r["entries"]
        self.figures["burst_entries_per_s"] = r["entries_per_s"]
        self.figures["burst_last_ms"] = r["last_ms"]
        self.figures["burst_missing"] = r["missing"]
        self.figures["burst_duplicates"] = r["duplicates"]

    def steady(self) -> None:
        c = self.config
        r = self.driver.command(
            c.steady_seconds + c.drain + 60,
            cmd="steady",
            rate=c.rate,
            seconds=c.steady_seconds,
            size=c.size,
            group=GROUP,
            drain=c.drain,
        )
        self.raw["steady"] = r
        self.figures["steady_rate"] = r["rate"]
        self.figures["steady_entries"] = r["produced"]
        self.figures["steady_produce_s"] = r["produce_seconds"]
        for k in ("p50_ms", "p99_ms", "max_ms", "missing", "duplicates"):
            self.figures[f"steady_{k}"] = r[k]
        state = r["group_at_end"] or {}
        self.figures["steady_backlog_at_end"] = (state.get("lag") or 0) + (state.get("pending") or 0)
        self.figures["steady_drained_ms"] = r["drained_ms"]

    def _closedLoop(self, label: str, r: Dict[str, Any]) -> None:
        self.raw[label] = r
        f = self.figures
        f[f"{label}_sent"] = r["sent"]
        f[f"{label}_errors"] = r["requests"] - r["statuses"].get("200", 0)
        f[f"{label}_delivered"] = r["delivered"]
        f[f"{label}_received"] = r["received"]
        f[f"{label}_missing"] = r["missing"]
        f[f"{label}_duplicates"] = r["duplicates"]
        for k in ("p50_ms", "p99_ms", "max_ms"):
            f[f"{label}_{k}"] = r[k]

    def stop(self) -> None:
        self.driver.stop()


# -- reporting ----------------------------------------------------------------


def summarise(folder: str, top: int = 40) -> None:
    """
    Next to each C{PID.prof} of C{folder}, C{PID.txt}: the functions that
    took the most time themselves, then with what they called.
    """
    import io
    import pstats

    for name in sorted(os.listdir(folder)):
        if not name.endswith(".prof"):
            continue
        out = io.StringIO()
        stats = pstats.Stats(os.path.join(folder, name), stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        with open(os.path.join(folder, name[: -len(".prof")] + ".txt"), "w") as f:
            f.write(out.getvalue())


def formatTable(figures: Dict[str, Dict[str, Any]], names: Sequence[str]) -> str:
    keys: List[str] = []
    for name in names:
        keys += [k for k in figures[name] if k not in keys]
    ratio = len(names) == 2
    header = ["figure", *names] + ([f"{names[1]}/{names[0]}"] if ratio else [])
    rows = [header]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return f"{v:,}"

    for key in keys:
        row = [key] + [fmt(figures[n].get(key)) for n in names]
        if ratio:
            a, b = figures[names[0]].get(key), figures[names[1]].get(key)
            row.append(f"{b / a:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parseArgs(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny run (seconds), as the tests do")
    p.add_argument("--workers", type=int, default=2, help="processes of the second daemon (with --redis)")
    p.add_argument("--only", choices=("single", "workers"), help="run one of the two daemons")
    p.add_argument("--sessions", type=int, default=1000, help="WebSocket clients held, one session each")
    p.add_argument("--seconds", type=float, default=10.0, help="publish and batch: seconds of load")
    p.add_argument("--connections", type=int, default=8, help="publish: keep-alive HTTP connections")
    p.add_argument("--batch", type=int, default=1000, help="messages per POST /api/batch")
    p.add_argument("--batch-connections", type=int, default=2, help="batch: keep-alive HTTP connections")
    p.add_argument("--size", type=int, default=64, help="bytes per message")
    p.add_argument("--burst", type=int, default=100000, help="entries in the stream's backlog")
    p.add_argument("--rate", type=int, default=10000, help="steady: entries XADDed per second")
    p.add_argument("--steady-seconds", type=float, default=20.0, help="steady: seconds of production")
    p.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers after the load")
    p.add_argument("--burst-drain", type=float, default=120.0, help="seconds to wait for the backlog")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile each process of the daemons from start to exit: DIR/<daemon>/<pid>.prof and a summary .txt",
    )
    p.add_argument(
        "--wsglue-tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also run the daemons from the wsglue checkout at PATH, named NAME-LABEL (to compare two trees)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated, of " + ", ".join(PHASES))
    p.add_argument("--output", default=os.path.join(os.path.dirname(HERE), "results"), help="folder for the JSON")
    config = p.parse_args(argv)
    if config.smoke:
        config.sessions, config.seconds, config.burst = 20, 1.0, 500
        config.rate, config.steady_seconds, config.drain, config.burst_drain = 500, 1.0, 10.0, 20.0
    if config.workers < 2:
        p.error("--workers must be 2 or more")
    config.trees = []
    for spec in config.wsglue_tree:
        label, _, path = spec.partition("=")
        if not (label and os.path.isfile(os.path.join(path, "wsglue", "__init__.py"))):
            p.error(f"--wsglue-tree: expected LABEL=PATH of a wsglue checkout, not {spec!r}")
        config.trees.append((label, os.path.abspath(path)))
    config.phases = [x.strip() for x in config.phases.split(",") if x.strip()]
    for phase in config.phases:
        if phase not in PHASES:
            p.error(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parseArgs(argv)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    ensureNodeModules(LOAD)
    kinds = [("wsglue", 1), (f"wsglue-workers{config.workers}", config.workers)]
    if config.only == "single":
        kinds = kinds[:1]
    elif config.only == "workers":
        kinds = kinds[1:]
    # Each kind with this checkout, then with each --wsglue-tree.
    daemons = [(name, workers, ROOT) for name, workers in kinds]
    for label, tree in config.trees:
        daemons += [(f"{name}-{label}", workers, tree) for name, workers in kinds]
    figures: Dict[str, Dict[str, Any]] = {}
    raw: Dict[str, Any] = {}
    commands: Dict[str, List[str]] = {}
    load = {"loadavg_at_start": os.getloadavg()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wsglue-ingress-") as folder:
        for name, workers, tree in daemons:
            sys.stderr.write(f"bench.ingress: {name}\n")
            profile = os.path.abspath(os.path.join(config.profile, name)) if config.profile else None
            if profile:
                os.makedirs(profile, exist_ok=True)
            daemon = Daemon(name, workers, folder, profile, tree)
            commands[name] = ["twistd", *daemon.argv[1:]]
            run = None
            try:
                run = Run(daemon, config)
                figures[name] = run.run()
                raw[name] = run.raw
            finally:
                if run is not None:
                    run.stop()
                daemon.stop()
                if profile:
                    summarise(profile)
    load["loadavg_at_end"] = os.getloadavg()
    names = [name for name, _, _ in daemons]
    result = {
        "started": started,
        "seconds": time.monotonic() - t0,
        "command": ["python", "-m", "bench.ingress", *(argv if argv is not None else sys.argv[1:])],
        "machine": {**machine({}), **load},
        "config": vars(config),
        "server_commands": commands,
        "figures": figures,
        "raw": raw,
    }
    os.makedirs(config.output, exist_ok=True)
    path = os.path.join(config.output, f"ingress-{started}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(formatTable(figures, names))
    print(f"\nload average {load['loadavg_at_start']} -> {load['loadavg_at_end']}; written to {path}")
    return 0


if __name__ == "__main__":
    runMain("bench.ingress", main)
