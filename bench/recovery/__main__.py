"""
wsglue's resume (the C{wsglue.v1} subprotocol, docs/protocol.md) side by side with
Socket.IO 4.8's connection state recovery, with one command::

    python -m bench.recovery            # the full run (about 4 minutes)
    python -m bench.recovery --smoke    # a tiny run; tests/test_recovery_smoke.py

Four systems, each started as its user would start it:

- C{wsglue}: one C{twistd -n wsglue} daemon (history in memory);
- C{wsglue-redis}: two daemons on one private Redis (C{--redis});
- C{socketio}: one Socket.IO server, in-memory adapter;
- C{socketio-redis}: two Socket.IO servers on C{@socket.io/redis-streams-adapter}
  and one private Redis.

The same scripted reconnects run against each (C{bench/peers/socketio/client.js},
one Node runtime for both clients: C{ws} speaking C{wsglue.v1}, and
C{socket.io-client}), with a numbered stream flowing to each client's session
and a numbered broadcast:

- C{a}: a drop (TCP cut, no close frame) during the stream, a reconnect;
- C{b}: many drops and reconnects in a row, quickly, during the stream;
- C{c}: a drop before any message was received, a reconnect;
- C{d}: a drop, and a reconnect to the other process (n/a in memory);
- C{e}: a long drop (2.5 s: 250 messages of the stream, more than wsglue's
  default C{--history-size 100}), a reconnect;
- C{f}: a half-open drop: a TCP proxy cuts the client's side and leaves the
  server's side open and unread (the server has not noticed yet), a reconnect.

The table: messages lost and duplicated (counted by content), how many
reconnects were recovered, and the resume time (from the new connection's
start to wsglue's C{welcome} / Socket.IO's C{connect}), p50 and p99.
The JSON goes to C{bench/results/recovery-<UTC timestamp>.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from bench.__main__ import ROOT, TWISTD, BenchError, Child, freePort, runMain

PEER = os.path.join(ROOT, "bench", "peers", "socketio")
SYSTEMS = ("wsglue", "wsglue-redis", "socketio", "socketio-redis")
SCENARIOS = {
    "a": "drop during the stream, reconnect",
    "b": "repeated drops and reconnects",
    "c": "drop before any message, reconnect",
    "d": "reconnect to the other process",
    "e": "a long drop (--long-pause), then reconnect",
    "f": "half-open drop (the server's side stays open), reconnect",
}
NPM_PACKAGES = ("socket.io", "socket.io-client", "@socket.io/redis-streams-adapter", "redis", "ws")


def ensurePeer() -> None:
    """
    Install the Socket.IO peer's npm packages from its lock file if missing.
    """
    if os.path.isdir(os.path.join(PEER, "node_modules", "socket.io-client")):
        return
    if shutil.which("npm") is None:
        raise BenchError("npm is needed for bench.recovery (bench/peers/socketio)")
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
        timeout=300,
        cwd=PEER,
        stdin=subprocess.DEVNULL,
    )


class Redis(Child):
    def __init__(self) -> None:
        self.port = freePort()
        super().__init__(
            "redis",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
        self.waitForLine("Ready to accept connections", 20)
        self.url = f"redis://127.0.0.1:{self.port}/0"


class System:
    """
    One system under test: its processes (one or two servers, maybe a
    Redis) and the URLs of its first and second server.
    """

    def __init__(self, name: str, extra: Sequence[str] = ()) -> None:
        self.name = name
        self.extra = list(extra)
        self.children: List[Child] = []
        self.commands: List[List[str]] = []
        self.urls: List[str] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        redis = None
        if self.name.endswith("-redis"):
            redis = Redis()
            self.children.append(redis)
        count = 2 if redis is not None else 1
        ports = [freePort() for _ in range(count)]
        started = []
        for port in ports:
            if self.name.startswith("wsglue"):
                env = dict(os.environ)
                env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
                argv = [
                    sys.executable,
                    "-c",
                    TWISTD,
                    "--pidfile=",
                    "-n",
                    "wsglue",
                    "--port",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--handler",
                    "bench.recovery.handler:Scenarios",
                    "--broadcast-interval",
                    "0",
                    "--ping-interval",
                    "0",
                ]
                if redis is not None:
                    argv += ["--redis", redis.url]
                argv += self.extra
                child = Child(f"{self.name}:{port}", argv, env=env)
                self.commands.append(["twistd", *argv[3:]])
                self.urls.append(f"ws://127.0.0.1:{port}/")
                started.append((child, "started websocket server at"))
            else:
                argv = ["node", os.path.join(PEER, "server.js"), str(port)]
                if redis is not None:
                    argv += ["--redis", redis.url]
                child = Child(f"{self.name}:{port}", argv)
                self.commands.append(argv)
                self.urls.append(f"http://127.0.0.1:{port}")
                started.append((child, "listening on"))
            self.children.append(child)
        # Both servers start at once; then each is waited for.
        for child, ready in started:
            child.waitForLine(ready, 30)
            child.quiet()

    def stop(self) -> None:
        # Servers first, their Redis last.
        for child in reversed(self.children):
            child.stop()


# The client.js processes running now (stopped by PID if the bench is interrupted).
_clients: Set["subprocess.Popen[str]"] = set()


def runScenario(system: System, scenario: str, config: argparse.Namespace) -> Dict[str, Any]:
    count = config.count
    if scenario == "b":
        count *= 2  # room for the reconnects in a row
    elif scenario == "e":
        count += int(config.rate * config.long_pause / 1000)  # the stream flows all through the drop
    clientConfig = {
        "system": "wsglue" if system.name.startswith("wsglue") else "socketio",
        "urls": system.urls if len(system.urls) == 2 else system.urls * 2,
        "scenario": scenario,
        "clients": config.reconnecting_clients if scenario in "be" else config.clients,
        "concurrency": config.concurrency,
        "count": count,
        "rate": config.rate,
        "reconnects": config.reconnects,
        "pauseMs": config.pause,
        "longPauseMs": config.long_pause,
        # Scenario c is about a client that has received nothing at all.
        "broadcastRate": 0 if scenario == "c" else config.broadcast_rate,
        "tailMs": config.tail,
    }
    argv = ["node", os.path.join(PEER, "client.js"), json.dumps(clientConfig)]
    proc = subprocess.Popen(
        argv, cwd=PEER, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _clients.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=config.scenario_timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{system.name} scenario {scenario}: client.js ran over {config.scenario_timeout}s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        _clients.discard(proc)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"{system.name} scenario {scenario}: no result (exit {proc.returncode}):\n{stderr[-2000:]}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise BenchError(f"{system.name} scenario {scenario}: {answer['error']}")
    result: Dict[str, Any] = answer["result"]
    result["config"] = clientConfig
    return result


def versions() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg(),
    }
    for module in ("twisted", "autobahn"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    for name, argv in (("node", ["node", "--version"]), ("redis_server", ["redis-server", "--version"])):
        try:
            info[name] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info[name] = None
    npm = {}
    for package in NPM_PACKAGES:
        try:
            with open(os.path.join(PEER, "node_modules", package, "package.json")) as f:
                npm[package] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            npm[package] = None
    info["npm"] = npm
    try:
        info["wsglue_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["wsglue_commit"] = None
    return info


def formatTable(results: Dict[str, Dict[str, Optional[Dict[str, Any]]]]) -> str:
    header = (
        "system",
        "scenario",
        "clients",
        "reconnects",
        "recovered",
        "not recovered",
        "lost",
        "lost when recovered",
        "duplicated",
        "resume p50 ms",
        "resume p99 ms",
        "errors",
    )
    rows: List[Tuple[str, ...]] = [header]
    for name, scenarios in results.items():
        for scenario, r in scenarios.items():
            if r is None:
                rows.append((name, scenario, *(["n/a"] * (len(header) - 2))))
                continue
            rows.append(
                (
                    name,
                    scenario,
                    str(r["clients"]),
                    str(r["reconnects"]),
                    str(r["recovered"]),
                    str(r["notRecovered"]),
                    str(r["lost"]),
                    str(r["lostWhileRecovered"]),
                    str(r["duplicated"]),
                    str(r["resumeP50Ms"]),
                    str(r["resumeP99Ms"]),
                    str(r["errors"]),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parseArgs(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds), as CI does")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of " + ", ".join(SYSTEMS))
    parser.add_argument("--scenarios", default="abcdef", help="letters of a, b, c, d, e, f")
    parser.add_argument("--clients", type=int, default=100, help="clients in scenarios a, c, d")
    parser.add_argument("--reconnecting-clients", type=int, default=20, help="clients in scenarios b and e")
    parser.add_argument("--reconnects", type=int, default=20, help="drops and reconnects of each client in b")
    parser.add_argument("--concurrency", type=int, default=20, help="clients running at once")
    parser.add_argument("--count", type=int, default=150, help="messages of each session stream (b: twice)")
    parser.add_argument("--rate", type=float, default=100, help="session stream messages a second")
    parser.add_argument("--broadcast-rate", type=float, default=20, help="broadcast messages a second (not in c)")
    parser.add_argument("--pause", type=int, default=200, help="ms between a drop and the reconnect (a, c, d)")
    parser.add_argument("--long-pause", type=int, default=2500, help="ms between a drop and the reconnect in e")
    parser.add_argument(
        "--wsglue-args", default="", help="more wsglue options, e.g. '--history-size 1000' (split on spaces)"
    )
    parser.add_argument("--tail", type=int, default=3000, help="ms to wait for the stream's end after its last")
    parser.add_argument("--scenario-timeout", type=float, default=300, help="seconds for one scenario, at most")
    parser.add_argument("--parallel", action="store_true", help="run the systems at once (--smoke does)")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results"))
    config = parser.parse_args(argv)
    if config.smoke:
        config.clients, config.reconnecting_clients, config.reconnects = 3, 2, 4
        config.concurrency, config.count, config.tail, config.scenario_timeout = 3, 40, 4000, 50
        config.parallel = True
    config.systems = [s for s in config.systems.split(",") if s]
    for s in config.systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    config.scenarios = [s for s in config.scenarios if s in SCENARIOS]
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parseArgs(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    ensurePeer()
    t0 = time.monotonic()
    info = versions()
    results: Dict[str, Dict[str, Optional[Dict[str, Any]]]] = {name: {} for name in config.systems}
    commands: Dict[str, List[List[str]]] = {}
    systems: List[System] = []
    failures: List[BaseException] = []

    def one(name: str) -> None:
        try:
            sys.stderr.write(f"bench.recovery: {name}\n")
            system = System(name, config.wsglue_args.split() if name.startswith("wsglue") else ())
            systems.append(system)
            commands[name] = system.commands
            try:
                for scenario in config.scenarios:
                    if scenario == "d" and len(system.urls) < 2:
                        results[name][scenario] = None  # one process: nowhere else to go
                        continue
                    sys.stderr.write(f"bench.recovery: {name} scenario {scenario}\n")
                    results[name][scenario] = runScenario(system, scenario, config)
            finally:
                system.stop()
        except BaseException as e:
            failures.append(e)

    try:
        if config.parallel:
            # The systems side by side at once (the smoke run: small enough
            # not to disturb each other); a measured run takes them in turn.
            threads = [threading.Thread(target=one, args=(name,), daemon=True) for name in config.systems]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        else:
            for name in config.systems:
                one(name)
                if failures:
                    break
    finally:
        for proc in list(_clients):
            if proc.poll() is None:
                proc.kill()
        for system in systems:
            system.stop()
    if failures:
        raise failures[0]
    info["loadavg_after"] = os.getloadavg()
    output = {
        "started": stamp,
        "seconds": round(time.monotonic() - t0, 1),
        "command": ["python", "-m", "bench.recovery", *(argv if argv is not None else sys.argv[1:])],
        "machine": info,
        "config": {k: v for k, v in vars(config).items()},
        "scenarios": SCENARIOS,
        "server_commands": commands,
        "results": results,
    }
    os.makedirs(config.output, exist_ok=True)
    path = os.path.join(config.output, f"recovery-{stamp}.json")
    with open(path, "w") as f:
        json.dump(output, f, indent=1)
    print(formatTable(results))
    print("\nscenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()))
    print(f"lost and duplicated count session-stream and broadcast messages; written to {path}")
    return 0


if __name__ == "__main__":
    runMain("bench.recovery", main)
