"""
The wsglue benchmark: wsglue against the Node C{ws} peer and the Python
C{websockets} peer, side by side, in one run, with one command::

    python -m bench              # the full run of issue 4 (minutes)
    python -m bench --smoke      # a tiny run (seconds), as CI does

Each repetition starts every server in turn (A B C A B C ...) exactly as a
user would, drives it with several Node load-generator processes
(C{bench/load/loader.js}, each bound to its own source address 127.N.0.x)
and measures: handshakes per second and KiB per idle session; broadcast
fan-out (time to first, p50, p99 and last delivery, missed messages); echo
round trips per second with p50/p99 latency at two connection counts; and
the CPU share of the server and of the load generators.  The medians over
the repetitions are printed as one table with each figure's ratio to the
Node peer, and written as JSON to C{bench/results/<timestamp>.json}.

Everything is bounded in time, traffic goes only to 127.0.0.0/8, and only
the processes started here are stopped (by PID), also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
NODE_PEER = os.path.join(BENCH, "peers", "node")
LOAD = os.path.join(BENCH, "load")
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

# Leave room under the 20,000 open files each process may hold: sockets,
# pipes, the interpreter's own files.
PER_PROCESS = 19000
# "wsglue" is one process; "wsglue-cluster" is --workers N sharing the port,
# with the registry on a private Redis (the way to more sessions than one
# process may hold files, and to more than one core).
# "-plain" runs the same with --no-levers: Autobahn's and Twisted's public
# API only, so that the table shows what the speed levers buy.
SERVERS = ("wsglue", "wsglue-plain", "wsglue-cluster", "wsglue-cluster-plain", "websockets", "node")
PLAIN = "-plain"
# "-nohistory" runs the same with --history-size 0: continuity off, so that
# a run shows what keeping the streams costs.
NOHISTORY = "-nohistory"
# "-v1": the same server, its load speaking wsglue.v1 (docs/protocol.md):
# every held and echo client offers the subprotocol, says hello, and sends
# and receives JSON envelopes.  "wsglue-v1" against "wsglue-nohistory" is
# continuity on against off.
V1 = "-v1"
# "-metrics": the same with --api (its own port, a key file) and /metrics
# scraped every second while the phases run.
METRICS = "-metrics"
SUFFIXES = (PLAIN, NOHISTORY, V1, METRICS)
CLUSTER = "wsglue-cluster"
REFERENCE = "node"
# What the smoke run adds to SERVERS, so that CI runs the wsglue.v1 load
# and the scraper too.
SMOKE_EXTRA = ("wsglue-v1", "wsglue-cluster-v1-metrics")


def parts(name: str) -> Tuple[str, FrozenSet[str]]:
    """
    A server name's base (C{wsglue}, C{wsglue-cluster}, C{wsglue-LABEL}...)
    and its suffixes, in any order: C{wsglue-cluster-v1-metrics} is
    C{("wsglue-cluster", {"-v1", "-metrics"})}.
    """
    found: Set[str] = set()
    for _ in range(len(SUFFIXES)):
        for suffix in SUFFIXES:
            if suffix not in found and name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                found.add(suffix)
    return name, frozenset(found)


def has(name: str, suffix: str) -> bool:
    return suffix in parts(name)[1]


def kind(name: str) -> str:
    """
    The server a name runs: C{wsglue-LABEL} and C{wsglue-cluster-LABEL}
    (from C{--wsglue-python LABEL=PATH}) are C{wsglue} and C{wsglue-cluster}
    under another Python; the suffixes (C{-plain}, C{-nohistory}, C{-v1},
    C{-metrics}) change how it runs, not what.
    """
    name = parts(name)[0]
    if name in SERVERS:
        return name
    return CLUSTER if name.startswith(CLUSTER + "-") else "wsglue"


class BenchError(Exception):
    """
    The bench could not run (a server did not start, a loader died...).
    """


# -- processes ----------------------------------------------------------------


def _raiseFileLimit() -> None:
    # Children get the hard limit on open files (20,000 here) as their soft
    # limit, as a production service manager would set it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Child:
    """
    A process started by the bench; its output is collected by a thread.

    The thread reads the output in chunks, as the process writes it, and
    hands it on line by line until L{quiet} is called: a server's start-up
    lines are waited for, the log lines of its sessions are not, and
    splitting and queueing tens of thousands of them would take CPU from
    the machine under test (the bench's own process is not in any share it
    reports).  The last 64 KiB are kept for error messages either way.
    """

    _TAIL = 65536

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        stdin: bool = False,
        cwd: str = ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self._tail: List[bytes] = []
        self._tailSize = 0
        self._quiet = False
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_raiseFileLimit,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def quiet(self) -> None:
        """
        Stop handing on lines: from now on the output is only kept for
        L{tail}.
        """
        self._quiet = True

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        carry = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._tail.append(chunk)
            self._tailSize += len(chunk)
            while self._tailSize - len(self._tail[0]) >= self._TAIL:
                self._tailSize -= len(self._tail.pop(0))
            if self._quiet:
                continue
            *complete, carry = (carry + chunk).split(b"\n")
            for line in complete:
                self.lines.put(line.decode("utf-8", "replace") + "\n")
        if carry and not self._quiet:
            self.lines.put(carry.decode("utf-8", "replace"))
        self.lines.put("")  # end of output

    def waitForLine(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {text!r} within {timeout}s:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line == "":
                raise BenchError(f"{self.name} exited ({self.proc.wait()}):\n{self.tail()}")
            if text in line:
                return line

    def tail(self, n: int = 20) -> str:
        text = b"".join(self._tail).decode("utf-8", "replace")
        return "".join(text.splitlines(keepends=True)[-n:])

    def stop(self, timeout: float = 10) -> None:
        """
        SIGTERM, then SIGKILL if it has not exited within C{timeout}.
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._reader.join(2)


class Loader(Child):
    """
    One C{loader.js} process, spoken to with one JSON line per command.
    """

    def __init__(self, port: int, source: str, v1: bool = False) -> None:
        Child.__init__(
            self,
            f"loader@{source}",
            ["node", os.path.join(LOAD, "loader.js"), "127.0.0.1", str(port), source] + (["v1"] if v1 else []),
            stdin=True,
        )
        self.source = source
        self.pending: List[Dict[str, Any]] = []
        self.held = 0
        self.expect("ready", 20)

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise BenchError(f"{self.name} is gone:\n{self.tail()}")

    def expect(self, event: str, timeout: float) -> Dict[str, Any]:
        for i, message in enumerate(self.pending):
            if message["ev"] == event:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {event!r} within {timeout:.0f}s:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line == "":
                raise BenchError(f"{self.name} exited ({self.proc.wait()}):\n{self.tail()}")
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a warning printed by node, not an answer
            if message.get("ev") == event:
                return message
            self.pending.append(message)

    def stop(self, timeout: float = 5) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(timeout)
            except (BenchError, subprocess.TimeoutExpired):
                pass
        Child.stop(self, timeout)


def descendants(pid: int) -> List[int]:
    """
    C{pid} and every process below it (worker processes).
    """
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo and len(found) < 10000:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def rssKiB(pids: Sequence[int]) -> int:
    """
    Resident memory of C{pids}, summed, in KiB.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pids: Sequence[int]) -> float:
    """
    User + system CPU time of C{pids}, summed (from /proc/PID/stat).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def openFiles(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


class CpuMeter:
    """
    The CPU share (percent of one core) of two groups of processes over an
    interval.
    """

    def __init__(self, server: Callable[[], List[int]], load: Callable[[], List[int]]) -> None:
        self.server, self.load = server, load
        self.t0 = time.monotonic()
        self.s0, self.l0 = cpuSeconds(server()), cpuSeconds(load())

    def shares(self) -> Dict[str, float]:
        wall = max(time.monotonic() - self.t0, 1e-6)
        return {
            "server_cpu_pct": 100 * (cpuSeconds(self.server()) - self.s0) / wall,
            "load_cpu_pct": 100 * (cpuSeconds(self.load()) - self.l0) / wall,
        }


def freePort() -> int:
    # Below the ephemeral range (see tests/ports.py): a server's port must
    # not be taken by an outgoing connection before the server binds it.
    from tests.ports import freePort as belowEphemeral

    return belowEphemeral()


# -- the servers --------------------------------------------------------------


def ensureNodeModules(folder: str) -> None:
    """
    Install the npm dependencies of C{folder} if they are missing.
    """
    if os.path.isdir(os.path.join(folder, "node_modules", "ws")):
        return
    if shutil.which("npm") is None:
        raise BenchError("npm is needed for the bench (Node peer and load generators)")
    subprocess.run(
        ["npm", "install", "--prefix", folder, "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
        check=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


class Server:
    """
    One server under test, started as its user would start it.
    """

    def __init__(self, name: str, config: argparse.Namespace) -> None:
        self.name = name
        self.config = config
        self.port = freePort()
        self.extra: List[Child] = []
        self.child: Optional[Child] = None
        self.apiPort = 0
        self.keyFile: Optional[str] = None
        try:
            self._start(name, config)
        except BaseException:
            # A server that never got ready (or Ctrl-C while it started)
            # leaves nothing running: not itself, its workers or its Redis.
            self.stop()
            raise

    def _start(self, name: str, config: argparse.Namespace) -> None:
        env = dict(os.environ)
        cwd = ROOT
        if kind(name) in ("wsglue", CLUSTER):
            # The checkout under test, or another tree (--wsglue-tree).
            base, suffixes = parts(name)
            # It runs from that tree: with -c the current folder comes first
            # on sys.path, before PYTHONPATH (this checkout follows it, for
            # bench.handler).
            cwd = config.trees.get(base, ROOT)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, ROOT, env.get("PYTHONPATH")) if p)
            if PLAIN in suffixes:
                env["WSGLUE_NO_LEVERS"] = "1"
            # The cluster's workers are started by wsglue with its own
            # sys.executable, so they run under this Python too.
            argv = [
                config.pythons.get(base, sys.executable),
                "-c",
                TWISTD,
                "--pidfile=",
                "-n",
                "wsglue",
                "--port",
                f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
                "--handler",
                config.handler,
                "--broadcast-interval",
                "0",
                "--ping-interval",
                "0",
            ]
            if NOHISTORY in suffixes:
                argv += ["--history-size", "0"]
            if METRICS in suffixes:
                # The API on a port of its own, for /metrics (no key needed
                # to scrape it; the daemon requires a key file with --api).
                self.apiPort = freePort()
                fd, self.keyFile = tempfile.mkstemp(prefix="wsglue-bench-", suffix=".keys")
                os.write(fd, os.urandom(16).hex().encode() + b"\n")
                os.close(fd)
                argv += ["--api", f"tcp:{self.apiPort}:interface=127.0.0.1", "--api-key-file", self.keyFile]
            if kind(name) == CLUSTER:
                redisPort = freePort()
                redis = Child(
                    "redis",
                    [
                        "redis-server",
                        "--port",
                        str(redisPort),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                )
                self.extra.append(redis)
                redis.waitForLine("Ready to accept connections", 20)
                argv += ["--workers", str(config.workers), "--redis", f"redis://127.0.0.1:{redisPort}/0"]
            ready = "started websocket server at"
        elif name == "websockets":
            argv = [sys.executable, os.path.join(BENCH, "peers", "websockets_peer.py"), str(self.port), "127.0.0.1"]
            ready = "listening on"
        elif name == "node":
            argv = ["node", os.path.join(NODE_PEER, "server.js"), str(self.port), "127.0.0.1"]
            ready = "listening on"
        else:
            raise BenchError(f"unknown server {name!r}")
        self.argv = argv
        self.child = Child(name, argv, env=env, cwd=cwd)
        self.child.waitForLine(ready, 30)
        if kind(name) == CLUSTER:
            # The parent only binds; each worker says when it accepts.
            for _ in range(config.workers):
                self.child.waitForLine("accepting connections at", 30)
        # Ready: its session log lines need not be read line by line.
        self.child.quiet()
        if self.apiPort:
            deadline = time.monotonic() + 30
            while scrape(self.apiPort, 5) is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: no /metrics on port {self.apiPort} within 30s:\n{self.child.tail()}")
                time.sleep(0.1)

    def pids(self) -> List[int]:
        assert self.child is not None  # set once the server started
        return descendants(self.child.pid) + self.extraPids()

    def extraPids(self) -> List[int]:
        """
        The processes the server needs beside its own (its Redis).
        """
        return [pid for extra in self.extra for pid in descendants(extra.pid)]

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        for extra in self.extra:
            extra.stop()
        if self.keyFile:
            try:
                os.unlink(self.keyFile)
            except OSError:
                pass
            self.keyFile = None


def scrape(port: int, timeout: float) -> Optional[bytes]:
    """
    One C{GET /metrics} of the API at C{port}: the body, or C{None} when
    it failed.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            body: bytes = response.read()
            return body if response.status == 200 else None
    except (OSError, ValueError):
        return None


class Scraper:
    """
    A thread that scrapes C{/metrics} once a second, as Prometheus would,
    until L{stop}.
    """

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port = port
        self.interval = interval
        self.times: List[float] = []
        self.failures = 0
        self.size = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            t0 = time.monotonic()
            body = scrape(self.port, 5)
            if body is None:
                self.failures += 1
            else:
                self.times.append(1000 * (time.monotonic() - t0))
                self.size = len(body)
            self._stopped.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self) -> Dict[str, Any]:
        self._stopped.set()
        self._thread.join(10)
        return {
            "metrics_scrapes": len(self.times),
            "metrics_scrape_failures": self.failures,
            "metrics_scrape_p50_ms": percentile(self.times, 50) if self.times else None,
            "metrics_bytes": self.size,
        }


# -- measurements -------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


def report(loader: Loader, answer: Dict[str, Any]) -> None:
    """
    Say on stderr why a loader's handshakes failed, if any did.
    """
    if answer.get("why"):
        sys.stderr.write(f"bench: {loader.name}: handshakes failed: {json.dumps(answer['why'])}\n")


def split(n: int, parts: int) -> List[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# Each session's loaders take source addresses in a /16 of their own
# (127.1.0.2, 127.1.0.3, ..., then 127.2.0.2, ...): the ports the previous
# session left in TIME_WAIT would otherwise make the next server's
# handshakes slower (bind() before connect() searches for a free port).
_NETWORKS = iter(range(1, 255))


class Session:
    """
    One server with its load generators, for one repetition.
    """

    def __init__(self, server: Server, config: argparse.Namespace, rep: int) -> None:
        self.server = server
        self.config = config
        self.rep = rep
        biggest = max([config.idle, *config.broadcast, *(config.big if kind(server.name) == CLUSTER else [])])
        count = max(config.loaders, -(-biggest // PER_PROCESS))
        self.loaders: List[Loader] = []
        network = next(_NETWORKS, 0)
        for i in range(count):
            self.loaders.append(Loader(server.port, f"127.{network}.0.{2 + i}", v1=has(server.name, V1)))
        self.figures: Dict[str, Any] = {}
        self.handshakes = 0
        self.rampCpu: List[Any] = []
        self.failures = 0
        self.handshakeTime = 0.0
        self.redisBaseline = 0

    def loadPids(self) -> List[int]:
        return [loader.pid for loader in self.loaders]

    def held(self) -> int:
        return sum(loader.held for loader in self.loaders)

    def rampTo(self, total: int) -> None:
        """
        Open idle connections until C{total} are held, spread over the
        loaders (each bound to its own source address).
        """
        want = max(0, total - self.held())
        if not want:
            return
        meter = CpuMeter(self.server.pids, self.loadPids)
        try:
            self._rampTo(want)
        finally:
            self.rampCpu.append((time.monotonic() - meter.t0, meter.shares()))

    def _rampTo(self, want: int) -> None:
        shares = split(want, len(self.loaders))
        concurrency = max(1, self.config.concurrency // len(self.loaders))
        for loader, n in zip(self.loaders, shares):
            if n:
                loader.send(cmd="open", n=n, concurrency=concurrency, timeout=10)
        results = []
        for loader, n in zip(self.loaders, shares):
            if n:
                r = loader.expect("opened", 60 + n / 100)
                loader.held = r["held"]
                results.append(r)
                report(loader, r)
        ok = sum(r["ok"] for r in results)
        self.failures += sum(r["failed"] for r in results)
        if ok:
            first = min(r["first"] for r in results if r["ok"])
            last = max(r["last"] for r in results if r["ok"])
            self.handshakes += ok
            self.handshakeTime += max(last - first, 1e-3) / 1000

    def broadcast(self, size: int, label: str) -> None:
        """
        Broadcast C{config.messages} times to every held connection; the
        medians of the per-message figures are kept under C{label}.
        """
        with self.profiled(label):
            self._broadcast(size, label)

    def _broadcast(self, size: int, label: str) -> None:
        held = self.held()
        per: Dict[str, List[float]] = {k: [] for k in ("first_ms", "p50_ms", "p99_ms", "last_ms", "missed")}
        meter = CpuMeter(self.server.pids, self.loadPids)
        timeout = self.config.broadcast_timeout
        for i in range(self.config.messages):
            tag = f"b{self.rep}.{size}.{i}:"
            message = "broadcast " + tag + "x" * max(0, self.config.payload - len(tag))
            for loader in self.loaders:
                loader.send(cmd="arm", tag=tag, timeout=timeout)
            for loader in self.loaders:
                loader.expect("arm-ok", 10)
            self.loaders[0].send(cmd="trigger", message=message)
            sentAt = self.loaders[0].expect("triggered", 10)["t"]
            times: List[float] = []
            for loader in self.loaders:
                times.extend(t - sentAt for t in loader.expect("armed", timeout + 10)["times"])
            per["missed"].append(held - len(times))
            if times:
                per["first_ms"].append(min(times))
                per["p50_ms"].append(percentile(times, 50))
                per["p99_ms"].append(percentile(times, 99))
                per["last_ms"].append(max(times))
        for key, values in per.items():
            self.figures[f"{label}_{key}"] = statistics.median(values) if values else None
        self.figures[f"{label}_clients"] = held
        self.figures.update({f"{label}_{k}": v for k, v in meter.shares().items()})

    def idle(self, label: str, baseline: int) -> None:
        held = self.held()
        self.figures[f"{label}_sessions"] = held
        grown = rssKiB(self.server.pids()) - baseline
        self.figures[f"{label}_kib_per_session"] = grown / held if held else None
        if self.server.extra:
            # Redis's share of it (included above).
            redis = rssKiB(self.server.extraPids()) - self.redisBaseline
            self.figures[f"{label}_redis_kib_per_session"] = redis / held if held else None

    def closeAll(self, baselineFiles: int) -> None:
        for loader in self.loaders:
            loader.send(cmd="closeall")
        for loader in self.loaders:
            loader.expect("closed", 30)
            loader.held = 0
        # Wait (bounded) until the server has let go of the sockets too.
        for _ in range(300):
            if openFiles(self.server.pids()) <= baselineFiles + 16:
                break
            time.sleep(0.05)

    @contextmanager
    def profiled(self, label: str) -> Iterator[None]:
        """
        With C{--profile DIR}, record the wsglue processes with py-spy
        during the phase run inside (collapsed stacks in
        C{DIR/<label>-r<repetition>.txt}).
        """
        child = self._startProfile(label)
        try:
            yield
        finally:
            self._stopProfile(child)

    def _startProfile(self, label: str) -> Optional[Child]:
        if not self.config.profile or not self.server.name.startswith("wsglue"):
            return None
        os.makedirs(self.config.profile, exist_ok=True)
        pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        out = os.path.join(self.config.profile, f"{label}-r{self.rep}.txt")
        child = Child(
            "py-spy",
            [
                pyspy,
                "record",
                "--format",
                "raw",
                "--subprocesses",
                "--nonblocking",
                "--rate",
                "200",
                "-o",
                out,
                "--pid",
                str(self.server.child.pid),
            ],
        )
        time.sleep(0.5)  # let py-spy attach before the phase starts
        return child

    def _stopProfile(self, child: Optional[Child]) -> None:
        if child is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGINT)
            try:
                child.proc.wait(20)
            except subprocess.TimeoutExpired:
                child.stop()

    def echo(self, n: int) -> None:
        label = f"echo{n}"
        with self.profiled(label):
            self._echo(n, label)

    def _echo(self, n: int, label: str) -> None:
        loaders = self.loaders[: max(1, min(self.config.echo_loaders, len(self.loaders)))]
        meter = CpuMeter(self.server.pids, lambda: [l.pid for l in loaders])
        for loader, share in zip(loaders, split(n, len(loaders))):
            loader.send(
                cmd="echo",
                n=share,
                seconds=self.config.seconds,
                warmup=self.config.warmup,
                client=self.config.echo_client,
            )
        count, seconds, opened, lat = 0, 0.0, 0, []
        for loader, share in zip(loaders, split(n, len(loaders))):
            r = loader.expect("echo", 60 + self.config.seconds + self.config.warmup)
            report(loader, r)
            count += r["count"]
            seconds = max(seconds, r["seconds"])
            opened += r["opened"]
            lat.extend(r["lat"])
        self.figures[f"{label}_connections"] = opened
        self.figures[f"{label}_rt_per_s"] = count / seconds if seconds else None
        self.figures[f"{label}_p50_ms"] = percentile(lat, 50) if lat else None
        self.figures[f"{label}_p99_ms"] = percentile(lat, 99) if lat else None
        self.figures.update({f"{label}_{k}": v for k, v in meter.shares().items()})

    def run(self) -> Dict[str, Any]:
        scraper = Scraper(self.server.apiPort) if self.server.apiPort else None
        try:
            self._run()
        finally:
            if scraper is not None:
                self.figures.update(scraper.stop())
        return self.figures

    def _run(self) -> None:
        config = self.config
        baseline = rssKiB(self.server.pids())
        self.redisBaseline = rssKiB(self.server.extraPids())
        baselineFiles = openFiles(self.server.pids())
        sizes = sorted(set(config.broadcast) | {config.idle})
        for size in sizes:
            with self.profiled(f"ramp{size}"):
                self.rampTo(size)
            if size == config.idle:
                self.idle("idle", baseline)
            if size in config.broadcast:
                self.broadcast(size, f"bcast{size}")
        self.figures["handshake_failures"] = self.failures
        self.figures["handshakes_per_s"] = self.handshakes / self.handshakeTime if self.handshakeTime else None
        # CPU shares over the ramps only, weighted by how long each took.
        wall = sum(w for w, _ in self.rampCpu)
        for key in ("server_cpu_pct", "load_cpu_pct"):
            self.figures[f"ramp_{key}"] = sum(w * shares[key] for w, shares in self.rampCpu) / wall if wall else None
        if kind(self.server.name) == CLUSTER:
            for size in config.big:
                before, spent = self.handshakes, self.handshakeTime
                failures = self.failures
                with self.profiled(f"ramp{size}"):
                    self.rampTo(size)
                self.figures[f"big{size}_handshake_failures"] = self.failures - failures
                self.figures[f"big{size}_handshakes_per_s"] = (
                    (self.handshakes - before) / (self.handshakeTime - spent) if self.handshakeTime > spent else None
                )
                self.idle(f"big{size}", baseline)
                self.broadcast(size, f"bcast{size}")
        self.closeAll(baselineFiles)
        for n in config.echo:
            self.echo(n)

    def stop(self) -> None:
        for loader in self.loaders:
            loader.stop()


# -- reporting ----------------------------------------------------------------


WHICH = (
    "import json, platform, twisted, autobahn; print(json.dumps({'python': "
    "platform.python_version(), 'implementation': platform.python_implementation(), "
    "'twisted': twisted.__version__, 'autobahn': autobahn.__version__}))"
)


def machine(pythons: Dict[str, str]) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for module in ("twisted", "autobahn", "websockets"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    info["open_files_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for python in sorted(set(pythons.values())):
        try:
            info.setdefault("wsglue_pythons", {})[python] = json.loads(
                subprocess.run([python, "-c", WHICH], capture_output=True, text=True, timeout=30).stdout
            )
        except (OSError, ValueError, subprocess.TimeoutExpired):
            info.setdefault("wsglue_pythons", {})[python] = None
    return info


def expectedFigures(config: argparse.Namespace, server: str) -> List[str]:
    """
    The name of every figure a run of C{server} produces with C{config}.
    """
    names = [
        "handshakes_per_s",
        "handshake_failures",
        "idle_sessions",
        "idle_kib_per_session",
        "ramp_server_cpu_pct",
        "ramp_load_cpu_pct",
    ]
    if kind(server) == CLUSTER:
        names.append("idle_redis_kib_per_session")
    bcast = ["first_ms", "p50_ms", "p99_ms", "last_ms", "missed", "clients", "server_cpu_pct", "load_cpu_pct"]
    for size in config.broadcast:
        names += [f"bcast{size}_{k}" for k in bcast]
    if kind(server) == CLUSTER:
        for size in config.big:
            names += [
                f"big{size}_sessions",
                f"big{size}_kib_per_session",
                f"big{size}_redis_kib_per_session",
                f"big{size}_handshakes_per_s",
                f"big{size}_handshake_failures",
            ]
            names += [f"bcast{size}_{k}" for k in bcast]
    for n in config.echo:
        names += [
            f"echo{n}_{k}" for k in ("connections", "rt_per_s", "p50_ms", "p99_ms", "server_cpu_pct", "load_cpu_pct")
        ]
    if has(server, METRICS):
        names += ["metrics_scrapes", "metrics_scrape_failures", "metrics_scrape_p50_ms", "metrics_bytes"]
    return names


def comparisons(config: argparse.Namespace, figures: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """
    The pairs of a run that answer a question, each figure with its target:
    a C{-v1} server against the same with C{-nohistory} instead (continuity
    on against off), a C{-metrics} server against the same without.
    """
    byParts = {parts(name): name for name in figures}
    out: List[Dict[str, Any]] = []

    def add(server: str, against: str, figure: str, how: str, target: float) -> None:
        v, ref = figures[server].get(figure), figures[against].get(figure)
        if v is None or ref is None:
            value = None
        elif how == "diff":
            value = v - ref
        else:
            value = v / ref if ref else None
        met = None
        if value is not None:
            met = value <= target if how in ("diff", "ratio<=") else value >= target
        out.append(
            {
                "server": server,
                "against": against,
                "figure": figure,
                "value": v,
                "reference": ref,
                "how": how,
                "result": value,
                "target": target,
                "met": met,
            }
        )

    for name in figures:
        base, suffixes = parts(name)
        if V1 in suffixes:
            against = byParts.get((base, (suffixes - {V1}) | {NOHISTORY}))
            if against is not None:
                for n in config.echo:
                    add(name, against, f"echo{n}_rt_per_s", "ratio>=", 0.95)
                for size in config.broadcast:
                    add(name, against, f"bcast{size}_last_ms", "ratio<=", 1.2)
                add(name, against, "idle_kib_per_session", "diff", 0.5)
        if METRICS in suffixes:
            against = byParts.get((base, suffixes - {METRICS}))
            if against is not None:
                for n in config.echo:
                    add(name, against, f"echo{n}_rt_per_s", "ratio>=", 0.97)
    return out


def formatComparisons(rows: List[Dict[str, Any]]) -> str:
    lines = ["| server | against | figure | server's | against's | result | target | met |", "|" + "---|" * 8]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if isinstance(v, float) else f"{v:,}"

    for r in rows:
        if r["how"] == "diff":
            result = "-" if r["result"] is None else f"{r['result']:+.2f} KiB"
            target = f"<= +{r['target']} KiB"
        else:
            result = "-" if r["result"] is None else f"{r['result']:.3f}x"
            target = f"{r['how'][-2:]} {r['target']}x"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            f"| {r['server']} | {r['against']} | {r['figure']} | {fmt(r['value'])} | {fmt(r['reference'])} "
            f"| {result} | {target} | {met} |"
        )
    return "\n".join(lines)


def medians(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    keys: List[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out: Dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def formatTable(figures: Dict[str, Dict[str, Any]], servers: Sequence[str]) -> str:
    names: List[str] = []
    for server in servers:
        names += [k for k in figures[server] if k not in names]
    header = ["figure", *servers] + [f"{s}/{REFERENCE}" for s in servers if s != REFERENCE and REFERENCE in servers]
    rows = [header]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return f"{v:,}"

    for name in names:
        row = [name] + [fmt(figures[s].get(name)) for s in servers]
        if REFERENCE in servers:
            ref = figures[REFERENCE].get(name)
            for s in servers:
                if s == REFERENCE:
                    continue
                v = figures[s].get(name)
                row.append(f"{v / ref:.2f}x" if v is not None and ref else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "| " + " | ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)) + " |"
        )
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------


def parseArgs(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    def counts(text: str) -> List[int]:
        return [int(x) for x in text.split(",") if x.strip() and int(x) > 0]

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny run (seconds), as CI does")
    p.add_argument(
        "--servers",
        default=None,
        help="comma-separated, in order: websockets, node, wsglue, wsglue-cluster (and wsglue-LABEL, "
        "wsglue-cluster-LABEL), the wsglue ones with any of the suffixes -plain (--no-levers), -nohistory "
        "(--history-size 0), -v1 (wsglue.v1 clients), -metrics (--api, /metrics scraped every second) "
        f"[default: {','.join(SERVERS)}; with --smoke also {','.join(SMOKE_EXTRA)}]",
    )
    p.add_argument(
        "--wsglue-tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="add the servers wsglue-LABEL and wsglue-cluster-LABEL, running the wsglue "
        "checkout at PATH (to compare two trees in one run; repeatable)",
    )
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--idle", type=int, default=10000, help="idle sessions held for KiB/session")
    p.add_argument("--broadcast", type=counts, default=[1000, 10000], help="fan-out sizes")
    p.add_argument("--big", type=counts, default=[100000], help="sessions held and broadcast to by wsglue-cluster only")
    p.add_argument("--echo", type=counts, default=[100, 1000], help="echo connection counts")
    p.add_argument("--seconds", type=float, default=5.0, help="echo measuring time")
    p.add_argument("--warmup", type=float, default=1.0, help="echo warm-up time")
    p.add_argument("--messages", type=int, default=5, help="broadcasts per fan-out size")
    p.add_argument("--payload", type=int, default=64, help="broadcast payload bytes")
    p.add_argument("--broadcast-timeout", type=float, default=10.0)
    p.add_argument("--loaders", type=int, default=4, help="load processes (at least)")
    p.add_argument("--echo-loaders", type=int, default=2, help="load processes for echo")
    p.add_argument(
        "--echo-client",
        choices=("raw", "ws"),
        default="raw",
        help="echo clients: raw sockets with prebuilt frames, or Node ws clients",
    )
    p.add_argument("--concurrency", type=int, default=256, help="handshakes in flight, all loaders")
    # Six: the fewest whose share of the 100,000-session phase (16,667 each,
    # 16.1k-17.2k files at the peak) stays well under the 20,000 files a
    # process may hold.  On two cores every process more costs CPU per
    # handshake (8 workers: 157-178 us, 6: 144-154 us; see the README).
    p.add_argument(
        "--workers", type=int, default=6, help="wsglue-cluster's --workers (each process holds < 20,000 files)"
    )
    p.add_argument(
        "--handler",
        default="bench.handler:Bench",
        help="wsglue's --handler (importable with the repository on PYTHONPATH)",
    )
    p.add_argument(
        "--wsglue-python",
        metavar="[LABEL=]PATH",
        action="append",
        default=[],
        help="run wsglue and wsglue-cluster under the Python at PATH (a virtualenv "
        "with wsglue's dependencies; the repository goes on its PYTHONPATH); "
        "with LABEL=, keep them and add the servers wsglue-LABEL and "
        "wsglue-cluster-LABEL instead (repeatable)",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy the wsglue processes into DIR")
    p.add_argument("--logs", metavar="DIR", help="write the last 64 KiB of each server's output into DIR")
    p.add_argument("--output", default=os.path.join(BENCH, "results"), help="folder for the JSON")
    config = p.parse_args(argv)
    if config.smoke:
        config.repetitions, config.idle, config.broadcast, config.big = 1, 20, [5, 10], []
        config.echo, config.seconds, config.warmup, config.messages = [2, 5], 0.5, 0.1, 2
        config.loaders, config.concurrency, config.workers = 2, 8, 2
        config.big = [30]
    config.pythons = {}
    for spec in config.wsglue_python:
        label, _, path = spec.rpartition("=")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            p.error(f"--wsglue-python: {path!r} is not an executable")
        if label and label.replace("-", "").replace("_", "").isalnum():
            config.pythons.update({f"wsglue-{label}": path, f"{CLUSTER}-{label}": path})
        elif label:
            p.error(f"--wsglue-python: bad label {label!r} (letters, digits, - and _)")
        else:
            config.pythons.update({"wsglue": path, CLUSTER: path})
    config.trees = {}
    for spec in config.wsglue_tree:
        label, _, path = spec.partition("=")
        if not (label and os.path.isfile(os.path.join(path, "wsglue", "__init__.py"))):
            p.error(f"--wsglue-tree: expected LABEL=PATH of a wsglue checkout, not {spec!r}")
        config.trees.update({f"wsglue-{label}": os.path.abspath(path), f"{CLUSTER}-{label}": os.path.abspath(path)})
    if config.servers is None:
        config.servers = ",".join(SERVERS + (SMOKE_EXTRA if config.smoke else ()))
    bases = ["wsglue", CLUSTER] + [n for n in list(config.pythons) + list(config.trees) if n not in SERVERS]
    config.servers = [s.strip() for s in config.servers.split(",") if s.strip()]
    for s in config.servers:
        base, suffixes = parts(s)
        if s in ("websockets", "node"):
            continue
        if base not in bases:
            p.error(
                f"unknown server {s!r}; choose from websockets, node, or {', '.join(bases)} "
                f"followed by any of {', '.join(SUFFIXES)}"
            )
        if {V1, NOHISTORY} <= suffixes:
            p.error(f"{s!r}: wsglue.v1 is not selected with --history-size 0 (-nohistory)")
        if V1 in suffixes and config.echo_client == "ws":
            p.error(f"{s!r}: the wsglue.v1 load has raw echo clients only (not --echo-client ws)")
    if config.workers < 2:
        p.error("--workers (of wsglue-cluster) must be 2 or more")
    if config.repetitions < 1:
        p.error("--repetitions must be 1 or more")
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parseArgs(argv)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # SIGTERM stops the bench like Ctrl-C: the finally clauses stop every
    # process it started.
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    ensureNodeModules(LOAD)
    if "node" in config.servers:
        ensureNodeModules(NODE_PEER)
    runs: List[Dict[str, Any]] = []
    commands: Dict[str, List[str]] = {}
    t0 = time.monotonic()
    for rep in range(config.repetitions):
        for name in config.servers:
            sys.stderr.write(f"bench: repetition {rep + 1}/{config.repetitions}: {name}\n")
            server = Server(name, config)
            # Recorded as a user would type it: twistd's entry point is run
            # with this Python so that it uses this checkout.
            twistd = (
                "twistd"
                if server.argv[0] == sys.executable
                else os.path.join(os.path.dirname(server.argv[0]), "twistd")
            )
            commands[name] = [twistd, *server.argv[3:]] if server.argv[1:3] == ["-c", TWISTD] else list(server.argv)
            session = None
            try:
                session = Session(server, config, rep)
                figures = session.run()
            finally:
                if session is not None:
                    session.stop()
                server.stop()
                if config.logs and server.child is not None:
                    os.makedirs(config.logs, exist_ok=True)
                    with open(os.path.join(config.logs, f"{name}-r{rep}.log"), "w") as f:
                        f.write(server.child.tail(10**6))
            runs.append({"repetition": rep, "server": name, "figures": figures})
    figures = {name: medians([r["figures"] for r in runs if r["server"] == name]) for name in config.servers}
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    if REFERENCE in figures:
        for name in config.servers:
            ratios[name] = {
                k: (v / figures[REFERENCE][k] if v is not None and figures[REFERENCE].get(k) else None)
                for k, v in figures[name].items()
            }
    compared = comparisons(config, figures)
    result = {
        "started": started,
        "seconds": time.monotonic() - t0,
        "command": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine(config.pythons),
        "config": {k: v for k, v in vars(config).items()},
        "servers": config.servers,
        "server_commands": commands,
        "expected": {name: expectedFigures(config, name) for name in config.servers},
        "figures": figures,
        "ratios_to_node": ratios,
        "comparisons": compared,
        "runs": runs,
    }
    os.makedirs(config.output, exist_ok=True)
    path = os.path.join(config.output, f"{started}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(formatTable(figures, config.servers))
    if compared:
        print("\ncontinuity on (-v1) against off (-nohistory), metrics scraped (-metrics) against not:\n")
        print(formatComparisons(compared))
    print(f"\nmedians of {config.repetitions} repetition(s); written to {path}")
    return 0


def runMain(name: str, main: Callable[[], int]) -> None:
    """
    Exit with what C{main()} returns: 1 with one line naming C{name} when
    the bench could not run (L{BenchError}), 130 on Ctrl-C.  Every
    benchmark's entry point (C{python -m bench}, C{bench.recovery},
    C{bench.storm}, C{bench.ingress}).
    """
    try:
        sys.exit(main())
    except BenchError as e:
        sys.stderr.write(f"{name}: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    runMain("bench", main)
