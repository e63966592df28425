"""
The resume storm: every C{wsglue.v1} session of a daemon comes back at
once, after a restart, and each must get its welcome (C{recovered: true})
and the messages it missed while it was away::

    python -m bench.storm            # 10,000 sessions (about a minute)
    python -m bench.storm --smoke    # 200 sessions (seconds), as CI does

Scenarios (C{--scenarios}, run in turn, printed side by side):

  - C{cluster-term}: C{--workers N --redis}.  The daemon is stopped with
    SIGTERM (a deploy: every client gets a 1001 close), and while it is
    down each session is owed C{--owed} messages, posted into its session
    stream through the HTTP API of another daemon on the same Redis (one
    process, no client: the backend's door while the gateway restarts).
    The daemon is started again; once every worker accepts, all the
    sessions reconnect at once.
  - C{cluster-kill}: the same, but every worker is killed with SIGKILL
    (a crash: the clients see their TCP connections end without a close
    frame) and the parent starts new ones.
  - C{single-drop}: one process, no Redis (its history is in its memory, a
    restart would lose it): the network drops every client at once (TCP
    aborts), the messages are posted through the daemon's own API while
    they are away, then all reconnect at once.

The clients are C{node bench/load/storm.js} processes (raw sockets, each
bound to its own source address 127.9.0.x, each under 20,000 files).
They do not come back by themselves: the storm is one command, which
makes every socket in one turn of each process.  Measured from that
moment: the time until each session has its welcome, and until it has all
its owed messages (p50, p99, last); sessions not recovered, messages
missing, duplicated or unexpected, offsets that did not go up by one,
retries (a connection refused or closed before it completed, retried
after a random delay under 0.1 s doubling), and the CPU time of the server
(its processes and Redis) over the storm.  The JSON goes to
C{bench/results/storm-<UTC timestamp>.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from bench.__main__ import (
    LOAD,
    ROOT,
    TWISTD,
    BenchError,
    Child,
    Loader,
    cpuSeconds,
    descendants,
    ensureNodeModules,
    freePort,
    machine,
    percentile,
    runMain,
    split,
)

STORM_JS = os.path.join(LOAD, "storm.js")
SCENARIOS = ("cluster-term", "cluster-kill", "single-drop")
KEY = "storm-bench-key-0123456789"


class StormClients(Loader):
    """
    One C{storm.js} process, spoken to as L{Loader} speaks to C{loader.js}.
    """

    def __init__(self, port: int, source: str) -> None:
        Child.__init__(self, f"storm@{source}", ["node", STORM_JS, "127.0.0.1", str(port), source], stdin=True)
        self.source = source
        self.pending: List[Dict[str, Any]] = []
        self.held = 0
        self.expect("ready", 20)


def waitForCounts(child: Child, wanted: Dict[str, int], timeout: float) -> None:
    """
    Read C{child}'s lines until each text of C{wanted} was seen as many
    times as it says (in any order).
    """
    seen = {text: 0 for text in wanted}
    deadline = time.monotonic() + timeout
    while any(seen[t] < n for t, n in wanted.items()):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{child.name}: not {wanted} within {timeout}s (saw {seen}):\n{child.tail()}")
        line = child.waitForLine("", left)
        for text in wanted:
            if text in line:
                seen[text] += 1


class Daemon:
    """
    A C{twistd wsglue} started (and started again) with one command line.
    """

    def __init__(self, name: str, argv: List[str], workers: int, api: bool) -> None:
        self.name = name
        self.argv = argv
        self.workers = workers
        self.api = api
        self.child: Optional[Child] = None
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.env = env

    def start(self) -> None:
        self.child = Child(self.name, self.argv, env=self.env)
        self.ready(started=True)

    def ready(self, started: bool) -> None:
        assert self.child is not None
        wanted: Dict[str, int] = {}
        if started:
            wanted["started websocket server at"] = 1
        if self.workers > 1:
            wanted["subscribed at"] = self.workers
            wanted["accepting connections at"] = self.workers
            if self.api:
                wanted["accepting api requests at"] = self.workers
        elif self.api and started:
            wanted["started api server at"] = 1
        waitForCounts(self.child, wanted, 60)
        self.child.quiet()

    def pids(self) -> List[int]:
        return descendants(self.child.pid) if self.child is not None and self.child.proc.poll() is None else []

    def workerPids(self) -> List[int]:
        return [p for p in self.pids() if self.child is not None and p != self.child.pid]

    def listen(self) -> None:
        """
        Hand on the output lines again (after L{Child.quiet}).
        """
        assert self.child is not None
        self.child._quiet = False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(20)


def keyFile(folder: str) -> str:
    path = os.path.join(folder, "keys")
    with open(path, "w") as f:
        f.write(KEY + "\n")
    os.chmod(path, 0o600)
    return path


def post(apiPort: int, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{apiPort}/api/batch",
        data=json.dumps({"messages": messages}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        results: List[Dict[str, Any]] = json.loads(response.read())["results"]
    return results


def owe(apiPort: int, sids: List[str], owed: int, prefix: str, parallel: int = 4) -> Dict[str, Any]:
    """
    Post C{owed} messages (C{prefix}1 ...) into each session's stream, in
    batches of at most 500 (each batch holds whole sessions, so that a
    session's messages keep their order), C{parallel} batches at a time.
    """
    # 500 messages a batch: a body of 1,000 would pass --max-message-size (64 KiB).
    per = max(1, 500 // owed)
    batches = [sids[i : i + per] for i in range(0, len(sids), per)]
    out: Dict[str, Any] = {"messages": 0, "no_stream": 0, "delivered": 0, "errors": []}
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not batches:
                    return
                batch = batches.pop()
            messages = [{"session": sid, "data": f"{prefix}{k}"} for sid in batch for k in range(1, owed + 1)]
            try:
                results = post(apiPort, messages)
            except Exception as e:
                with lock:
                    out["errors"].append(str(e))
                continue
            with lock:
                out["messages"] += len(results)
                out["no_stream"] += sum(1 for r in results if r["offset"] is None)
                out["delivered"] += sum(r["delivered"] for r in results)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def connections(apiPort: int) -> Optional[float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{apiPort}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("wsglue_connections "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def waitUntil(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"not {what} within {timeout}s")
        time.sleep(interval)


# Counters of the kernel's TCP stack (the whole machine): SYNs dropped
# because a listening socket's accept queue was full, and the like.
NETSTAT = ("ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "TCPReqQFullDrop", "TCPTimeouts")


def netstat() -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for names, values in zip(lines[::2], lines[1::2]):
        for k, v in zip(names.split()[1:], values.split()[1:]):
            if k in NETSTAT:
                out[k] = int(v)
    return out


def stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"first": None, "p50": None, "p99": None, "last": None}
    return {
        "first": round(min(values), 1),
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "last": round(max(values), 1),
    }


def scenario(name: str, config: argparse.Namespace, folder: str) -> Dict[str, Any]:
    """
    Run one scenario; its figures.
    """
    cluster = name.startswith("cluster")
    event = name.split("-", 1)[1]
    port, apiPort = freePort(), freePort()
    extra: List[Child] = []
    daemons: List[Daemon] = []
    clients: List[StormClients] = []
    figures: Dict[str, Any] = {
        "scenario": name,
        "sessions": config.sessions,
        "owed": config.owed,
        "backlog": config.backlog,
        "spread_ms": config.spread,
    }
    try:
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "--pidfile=",
            "-n",
            "wsglue",
            "--port",
            f"tcp:{port}:interface=127.0.0.1:backlog={config.backlog}",
            "--api",
            f"tcp:{apiPort}:interface=127.0.0.1",
            "--api-key-file",
            keyFile(folder),
            "--broadcast-interval",
            "0",
            "--ping-interval",
            "0",
        ]
        redisUrl = None
        if cluster:
            redisPort = freePort()
            redis = Child(
                "redis",
                ["redis-server", "--port", str(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            )
            extra.append(redis)
            redis.waitForLine("Ready to accept connections", 20)
            redisUrl = f"redis://127.0.0.1:{redisPort}/0"
            argv += ["--workers", str(config.workers), "--redis", redisUrl]
        server = Daemon(name, argv, config.workers if cluster else 1, api=True)
        daemons.append(server)
        server.start()
        figures["server_command"] = ["twistd", *argv[3:]]

        sources = [f"127.9.0.{i + 1}" for i in range(config.loaders)]
        clients = [StormClients(port, source) for source in sources]
        t = time.monotonic()
        for c, n in zip(clients, split(config.sessions, len(clients))):
            c.send(cmd="open", n=n, concurrency=max(1, config.concurrency // len(clients)), timeout=30)
        sids: List[str] = []
        for c in clients:
            opened = c.expect("opened", 600)
            if opened["failed"]:
                raise BenchError(f"{c.name}: {opened['failed']} sessions did not open")
            sids += opened["sids"]
        figures["open_seconds"] = round(time.monotonic() - t, 2)
        sys.stderr.write(f"storm: {name}: {len(sids)} sessions open in {figures['open_seconds']} s\n")
        if len(set(sids)) != config.sessions:
            raise BenchError(f"{len(set(sids))} distinct sessions, not {config.sessions}")

        # The event: the clients lose their connections.
        t = time.monotonic()
        postPort = apiPort
        if event == "drop":
            for c in clients:
                c.send(cmd="drop")
            for c in clients:
                c.expect("dropped", 30)
            waitUntil(lambda: connections(apiPort) == 0, 60, "every connection gone from the server")
        else:
            # Another daemon on the same Redis posts while this one is down.
            posterApi = freePort()
            poster = Daemon(
                "poster",
                [
                    *argv[:6],
                    "--port",
                    f"tcp:{freePort()}:interface=127.0.0.1",
                    "--api",
                    f"tcp:{posterApi}:interface=127.0.0.1",
                    "--api-key-file",
                    keyFile(folder),
                    "--broadcast-interval",
                    "0",
                    "--redis",
                    str(redisUrl),
                ],
                1,
                api=True,
            )
            daemons.append(poster)
            poster.start()
            postPort = posterApi
            for c in clients:
                c.send(cmd="waitclosed", timeout=60)
            if event == "term":
                server.child.stop(30)  # type: ignore[union-attr]
            else:
                server.listen()
                workers = server.workerPids()
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
            closes: Dict[str, int] = {}
            for c in clients:
                closed = c.expect("closed", 90)
                if closed["open"]:
                    raise BenchError(f"{c.name}: {closed['open']} sessions still open")
                for code, n in closed["codes"].items():
                    closes[code] = closes.get(code, 0) + n
            figures["close_codes"] = closes
        figures["down_seconds_to_all_closed"] = round(time.monotonic() - t, 2)

        owed = owe(postPort, sids, config.owed, "m")
        figures["post"] = owed
        sys.stderr.write(f"storm: {name}: posted {owed}\n")
        if owed["errors"] or owed["messages"] != config.sessions * config.owed:
            raise BenchError(f"posting failed: {owed}")

        if event == "term":
            server.start()
        elif event == "kill":
            server.ready(started=False)
        figures["down_seconds"] = round(time.monotonic() - t, 2)

        # The storm.
        serverPids = server.pids() + [p for e in extra for p in descendants(e.pid)]
        cpu0 = cpuSeconds(serverPids)
        load0 = os.getloadavg()
        net0 = netstat()
        t = time.monotonic()
        for c in clients:
            c.send(
                cmd="storm",
                expect=config.owed,
                prefix="m",
                timeout=config.timeout,
                settle=config.settle,
                spread=config.spread,
            )
        results = [c.expect("storm", config.timeout + 60) for c in clients]
        wall = time.monotonic() - t
        base = min(r["t0"] for r in results)
        welcome = [r["t0"] - base + w for r in results for w in r["welcome"]]
        done = [r["t0"] - base + d for r in results for d in r["done"]]
        lastDone = max((r["t0"] - base + r["lastDone"] for r in results), default=0.0)
        serverCpu = cpuSeconds(serverPids) - cpu0
        net1 = netstat()
        seconds = [0] * (int(max(welcome, default=0) // 1000) + 1)
        for w in welcome:
            seconds[int(w // 1000)] += 1
        figures.update(
            {
                "welcome_ms": stats(welcome),
                "complete_ms": stats(done),
                # Welcomes in each second of the storm: 0-1 s, 1-2 s, ...
                "welcome_per_second": seconds,
                # The kernel's counters over the storm (the whole machine).
                "netstat": {k: net1.get(k, 0) - net0.get(k, 0) for k in NETSTAT},
                "welcomed": len(welcome),
                "complete": len(done),
                "recovered": sum(r["recovered"] for r in results),
                "unrecovered": sum(r["unrecovered"] for r in results),
                "missing": sum(r["missing"] for r in results),
                "duplicated": sum(r["duplicated"] for r in results),
                "unexpected": sum(r["unexpected"] for r in results),
                "offset_gaps": sum(r["gaps"] for r in results),
                "retries": sum(r["retries"] for r in results),
                "incomplete": sum(r["incomplete"] for r in results),
                "storm_closes": _sum([r["closes"] for r in results]),
                # CPU seconds of the server (its processes, Redis) from the
                # storm's start until the last answer (settle included).
                "server_cpu_seconds": round(serverCpu, 2),
                "server_cpu_pct_until_last": round(
                    100 * serverCpu / max(lastDone / 1000 + config.settle / 1000, 1e-3), 1
                ),
                "storm_wall_seconds": round(wall, 2),
                "loadavg_before": [round(x, 2) for x in load0],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        return figures
    finally:
        for c in clients:
            c.stop()
        for d in reversed(daemons):
            d.stop()
        for e in extra:
            e.stop()


def _sum(dicts: List[Dict[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


ROWS = (
    ("sessions", lambda f: f["sessions"]),
    ("owed per session", lambda f: f["owed"]),
    ("welcome first ms", lambda f: f["welcome_ms"]["first"]),
    ("welcome p50 ms", lambda f: f["welcome_ms"]["p50"]),
    ("welcome p99 ms", lambda f: f["welcome_ms"]["p99"]),
    ("welcome last ms", lambda f: f["welcome_ms"]["last"]),
    ("complete p50 ms", lambda f: f["complete_ms"]["p50"]),
    ("complete p99 ms", lambda f: f["complete_ms"]["p99"]),
    ("complete last ms", lambda f: f["complete_ms"]["last"]),
    ("recovered", lambda f: f["recovered"]),
    ("not recovered", lambda f: f["unrecovered"]),
    ("incomplete", lambda f: f["incomplete"]),
    ("missing", lambda f: f["missing"]),
    ("duplicated", lambda f: f["duplicated"]),
    ("unexpected", lambda f: f["unexpected"]),
    ("offset gaps", lambda f: f["offset_gaps"]),
    ("retries", lambda f: f["retries"]),
    ("server CPU s", lambda f: f["server_cpu_seconds"]),
    ("listen overflows", lambda f: f["netstat"]["ListenOverflows"]),
    ("post s (owed msgs)", lambda f: f["post"]["seconds"]),
    ("down s", lambda f: f["down_seconds"]),
    ("backlog", lambda f: f["backlog"]),
    ("spread ms", lambda f: f["spread_ms"]),
)


def table(runs: List[Dict[str, Any]]) -> str:
    names = [r["scenario"] for r in runs]
    width = max(12, *(len(n) for n in names))
    lines = ["figure".ljust(20) + "".join(n.rjust(width + 2) for n in names)]
    for label, get in ROWS:
        cells = []
        for r in runs:
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(label.ljust(20) + "".join(c.rjust(width + 2) for c in cells))
    lines.append("\nwelcomes in each second of the storm (0-1 s, 1-2 s, ...):")
    for r in runs:
        lines.append(f"  {r['scenario']}: " + " ".join(str(n) for n in r.get("welcome_per_second", [])))
    return "\n".join(lines)


def parseArgs(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--owed", type=int, default=10, help="messages each session misses while away")
    p.add_argument("--workers", type=int, default=2, help="workers of the cluster scenarios")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--loaders", type=int, default=2, help="storm.js processes (127.9.0.1, .2, ...)")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight while opening")
    p.add_argument("--backlog", type=int, default=1024, help="the listening port's backlog")
    p.add_argument(
        "--spread", type=float, default=0, help="ms: each session comes back after a random delay under it (0: at once)"
    )
    p.add_argument("--timeout", type=float, default=120, help="seconds the storm may take")
    p.add_argument("--settle", type=float, default=1000, help="ms waited after the last completes")
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--smoke", action="store_true", help="a tiny run: 200 sessions, 2 owed")
    config = p.parse_args(argv)
    config.scenarios = [s.strip() for s in config.scenarios.split(",") if s.strip()]
    for s in config.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if config.smoke:
        config.sessions, config.owed, config.timeout, config.settle = 200, 2, 60, 300
    if config.sessions / config.loaders > 18000:
        p.error("more than 18,000 sessions per storm.js process (a process may hold 20,000 files)")
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parseArgs(argv)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    ensureNodeModules(LOAD)
    folder = tempfile.mkdtemp(prefix="wsglue-storm-")
    runs = []
    t0 = time.monotonic()
    try:
        for name in config.scenarios:
            sys.stderr.write(f"storm: {name}, {config.sessions} sessions, {config.owed} owed each\n")
            runs.append(scenario(name, config, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "started": started,
        "seconds": round(time.monotonic() - t0, 1),
        "command": ["python", "-m", "bench.storm", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine({}),
        "config": {k: v for k, v in vars(config).items()},
        "runs": runs,
    }
    os.makedirs(config.output, exist_ok=True)
    path = os.path.join(config.output, f"storm-{started}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(table(runs))
    print(f"\n{result['seconds']} s; written to {path}")
    bad = sum(r["missing"] + r["duplicated"] + r["unrecovered"] + r["incomplete"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    runMain("storm", main)
