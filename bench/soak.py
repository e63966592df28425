"""
Soak: one wsglue daemon under steady connections, a frequent broadcast and
continuous reconnects, for minutes; does its memory level off?

::

    python -m bench.soak --minutes 30
    python -m bench.soak --minutes 30 --connections 2000 --churn 200 \\
        --broadcast-interval 0.1 [--no-levers]

It starts ``twistd -n wsglue --port tcp:PORT:interface=127.0.0.1
--broadcast-interval 0.1 --ping-interval 0`` on a free loopback port, then
a client process (asyncio, raw-socket WebSocket clients: a handshake and a
close frame, nothing parsed in between, so the client stays cheap) that
holds ``--connections`` connections, ``--churn`` of which reconnect for ever:
open, hold ``--hold`` seconds (receiving broadcasts), close cleanly, open
again.  Every ``--sample`` seconds it reads the daemon's VmRSS and open
files from ``/proc`` and prints a row; at the end, the slope of RSS over the
last half of the run (MB/min and MB per 1,000 reconnects) and whether it
levelled off.

``--no-levers`` is passed to ``twistd wsglue`` when it knows the option,
else as ``WSGLUE_NO_LEVERS=1`` in the daemon's environment.  ``--env
NAME=VALUE`` (repeatable) sets more of it, e.g. ``MALLOC_ARENA_MAX=2`` or
``PYTHONMALLOC=malloc``; ``--server-arg`` (repeatable) adds a daemon option.

``--inspect DIR`` runs the daemon with the handler
``bench.soak:Inspecting`` (the default ping/pong plus a timer) which, every
``--sample`` seconds, writes to DIR the live objects by type, the sizes of
the module-level containers of wsglue's modules and of the factory's
dictionaries, the reactor's delayed calls, malloc's and pymalloc's totals,
and with ``--tracemalloc N`` (frames; costs CPU) a tracemalloc snapshot.
At the end the first sample after the ramp and the last are compared and
the largest growths printed.

Every wait is bounded, traffic stays on 127.0.0.0/8, and the processes the
soak starts are stopped by PID when it ends, fails or is interrupted
(Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pickle
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
READY = "started websocket server at"


class SoakError(Exception):
    pass


# -- processes ---------------------------------------------------------------


class Child:
    """
    A process the soak started.  A thread reads its output: lines are handed
    on (for the start-up line and the client's reports) until L{quiet}; the
    last 64 KiB are kept for error messages.
    """

    _TAIL = 65536

    def __init__(self, name: str, argv: Sequence[str], env: Dict[str, str], cwd: str = ROOT) -> None:
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
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group, so that a Ctrl-C on the terminal
            # reaches the soak only, which then stops it in order.
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def quiet(self) -> None:
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
            while len(self._tail) > 1 and self._tailSize - len(self._tail[0]) >= self._TAIL:
                self._tailSize -= len(self._tail.pop(0))
            if self._quiet:
                continue
            *complete, carry = (carry + chunk).split(b"\n")
            for line in complete:
                self.lines.put(line.decode("utf-8", "replace"))
        if carry and not self._quiet:
            self.lines.put(carry.decode("utf-8", "replace"))
        self.lines.put("\0")  # end of output

    def waitForLine(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SoakError(f"{self.name}: no {text!r} within {timeout}s:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line == "\0":
                raise SoakError(f"{self.name} exited ({self.proc.wait()}):\n{self.tail()}")
            if text in line:
                return line

    def tail(self, n: int = 30) -> str:
        text = b"".join(self._tail).decode("utf-8", "replace")
        return "".join(text.splitlines(keepends=True)[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
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


def freePort() -> int:
    """
    A free TCP port on 127.0.0.1 below the ephemeral range (so that no
    outgoing connection takes it before the daemon binds it).
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            last = int(f.read().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        last = 32767
    for _ in range(200):
        port = random.randint(20000, max(20001, last))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SoakError("no free port")


def procStats(pid: int) -> Tuple[float, int, float]:
    """
    VmRSS (MB), open files and CPU seconds (user + system) of C{pid}.
    """
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    files = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss / 1024.0, files, cpu


def knowsOption(python: str, env: Dict[str, str], option: str, tree: str = ROOT) -> bool:
    """
    Whether C{twistd wsglue --help} lists C{option}.
    """
    try:
        out = subprocess.run(
            [python, "-c", TWISTD, "wsglue", "--help"],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        ).stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return False
    return option in out


# -- the client process --------------------------------------------------------
#
# python -m bench.soak --client PORT STEADY CHURN HOLD COOKIES SOURCE
# prints one JSON line a second: connections open, reconnects, failures.

CLOSE_FRAME = bytes((0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8))  # masked (zero key), 1000


def request(port: int, cookie: Optional[bytes]) -> bytes:
    key = os.urandom(16).hex()[:22] + "=="
    head = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    ).encode()
    if cookie:
        head += b"Cookie: " + cookie + b"\r\n"
    return head + b"\r\n"


class _Conn(asyncio.Protocol):
    """
    One raw WebSocket client: handshake, then count the bytes that arrive.
    """

    def __init__(self, stats: Dict[str, int], cookie: Optional[bytes], port: int) -> None:
        self.stats = stats
        self.cookie = cookie
        self.port = port
        self.transport: Any = None
        self.buf = b""
        self.opened = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.setCookie: Optional[bytes] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(request(self.port, self.cookie))

    def data_received(self, data: bytes) -> None:
        if self.opened.done():
            self.stats["bytes"] += len(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self.opened.set_result(False)
                self.transport.abort()
            return
        head, rest = self.buf[:end], self.buf[end + 4 :]
        self.buf = b""
        ok = head.startswith(b"HTTP/1.1 101")
        if ok:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"set-cookie:"):
                    self.setCookie = line.split(b":", 1)[1].split(b";", 1)[0].strip()
        self.stats["bytes"] += len(rest)
        self.opened.set_result(ok)
        if not ok:
            self.transport.abort()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.lost.done():
            self.lost.set_result(None)


async def _open(
    loop: Any, port: int, stats: Dict[str, int], cookie: Optional[bytes], source: str, timeout: float = 10.0
) -> Optional[_Conn]:
    conn: Optional[_Conn] = None
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Conn(stats, cookie, port), "127.0.0.1", port, local_addr=(source, 0) if source else None
            ),
            timeout,
        )
        if await asyncio.wait_for(conn.opened, timeout):
            return conn
    except (OSError, asyncio.TimeoutError):
        pass
    if conn is not None and conn.transport is not None:
        conn.transport.abort()
    stats["failures"] += 1
    return None


async def _steady(
    loop: Any, port: int, stats: Dict[str, int], source: str, gate: asyncio.Semaphore, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        async with gate:
            conn = await _open(loop, port, stats, None, source)
        if conn is None:
            await asyncio.sleep(1)
            continue
        stats["open"] += 1
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([conn.lost, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        stats["open"] -= 1
        if not conn.lost.done():
            conn.transport.abort()
            return
        stats["steadyDrops"] += 1


async def _churn(
    loop: Any, port: int, stats: Dict[str, int], source: str, hold: float, keepCookie: bool, stop: asyncio.Event
) -> None:
    cookie: Optional[bytes] = None
    # Spread the first openings over one hold period.
    await asyncio.sleep(random.uniform(0, max(hold, 0.1)))
    while not stop.is_set():
        conn = await _open(loop, port, stats, cookie if keepCookie else None, source)
        if conn is None:
            await asyncio.sleep(1)
            continue
        if keepCookie and conn.setCookie:
            cookie = conn.setCookie
        stats["open"] += 1
        try:
            await asyncio.wait_for(stop.wait(), hold * random.uniform(0.5, 1.5))
        except asyncio.TimeoutError:
            pass
        conn.transport.write(CLOSE_FRAME)
        try:
            # The server answers with its close frame and drops the TCP
            # connection (so the TIME_WAIT is on its side, not ours).
            await asyncio.wait_for(asyncio.shield(conn.lost), 5)
        except asyncio.TimeoutError:
            conn.transport.abort()
            stats["closeTimeouts"] += 1
        stats["open"] -= 1
        if not stop.is_set():
            stats["reconnects"] += 1


async def clientMain(port: int, steady: int, churn: int, hold: float, keepCookie: bool, source: str) -> None:
    loop = asyncio.get_running_loop()
    stats = dict.fromkeys(("open", "reconnects", "failures", "steadyDrops", "closeTimeouts", "bytes"), 0)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gate = asyncio.Semaphore(64)
    tasks = [asyncio.ensure_future(_steady(loop, port, stats, source, gate, stop)) for _ in range(steady)]
    # The churning connections start once the steady ones are open (or
    # after 120 s at most).
    t0 = time.monotonic()
    while stats["open"] < steady and time.monotonic() - t0 < 120 and not stop.is_set():
        print(json.dumps(dict(stats, ramp=True)), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
    tasks += [asyncio.ensure_future(_churn(loop, port, stats, source, hold, keepCookie, stop)) for _ in range(churn)]
    while not stop.is_set():
        print(json.dumps(dict(stats, ramp=False)), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
    await asyncio.wait(tasks, timeout=10)
    print(json.dumps(dict(stats, done=True)), flush=True)


# -- the inspecting handler (--inspect) -------------------------------------------


def _wsglueModuleContainers() -> Dict[str, int]:
    """
    The length of every module-level dict, list, set or deque of wsglue's
    modules (wherever the modules live: found in sys.modules).
    """
    sizes = {}
    for name, module in list(sys.modules.items()):
        if not (name == "wsglue" or name.startswith("wsglue.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, (dict, list, set, frozenset)) or type(value).__name__ == "deque":
                sizes[f"{name}.{attr}"] = len(value)
            elif hasattr(value, "cache_info") and callable(value.cache_info):
                sizes[f"{name}.{attr}()"] = value.cache_info().currsize
    return sizes


def _instanceContainers(obj: Any, label: str) -> Dict[str, int]:
    sizes = {}
    for attr, value in list(getattr(obj, "__dict__", {}).items()):
        if isinstance(value, (dict, list, set)) or type(value).__name__ == "deque":
            sizes[f"{label}.{attr}"] = len(value)
    return sizes


_MALLINFO: List[Any] = []


def _mallinfo() -> Dict[str, int]:
    """
    glibc's mallinfo2: bytes in malloc's arenas, in use and free.
    """
    try:
        if not _MALLINFO:
            import ctypes

            class MallInfo2(ctypes.Structure):
                _fields_ = [
                    (n, ctypes.c_size_t)
                    for n in (
                        "arena",
                        "ordblks",
                        "smblks",
                        "hblks",
                        "hblkhd",
                        "usmblks",
                        "fsmblks",
                        "uordblks",
                        "fordblks",
                        "keepcost",
                    )
                ]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = MallInfo2
            _MALLINFO.append(libc.mallinfo2)
        m = _MALLINFO[0]()
        return {"malloc_arena": m.arena, "malloc_mmap": m.hblkhd, "malloc_used": m.uordblks, "malloc_free": m.fordblks}
    except Exception:
        return {}


def _pymallocArenas() -> Dict[str, int]:
    """
    pymalloc's arenas and pools, from sys._debugmallocstats (written to the
    C stderr, read back through a temporary file).
    """
    import tempfile

    if not hasattr(sys, "_debugmallocstats"):
        return {}
    out: Dict[str, int] = {}
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp.read().decode("ascii", "replace").splitlines():
            for key, label in (
                ("arenas allocated current", "pymalloc_arenas"),
                ("# bytes in allocated blocks", "pymalloc_used"),
                ("# bytes in available blocks", "pymalloc_free_in_pools"),
                ("unused pools", "pymalloc_unused_pools_bytes"),
                ("bytes in arenas", "pymalloc_arena_bytes"),
            ):
                if line.strip().startswith(key) or (key == "unused pools" and key in line):
                    try:
                        out[label] = int(line.split("=")[-1].replace(",", "").split()[0])
                    except (ValueError, IndexError):
                        pass
    return out


class Inspecting:
    """
    A wsglue handler for C{--inspect}: the default ping/pong, plus a timer
    that writes what the process holds to C{$SOAK_INSPECT_DIR} every
    C{$SOAK_INSPECT_EVERY} seconds (see the module's docstring).
    """

    def __init__(self, registry: Any) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import LoopingCall

        try:
            from wsglue.handlers import PingPong
        except ImportError:  # moved: the handler's own answer is enough
            PingPong = None
        self.registry = registry
        self._pingPong = PingPong(registry) if PingPong is not None else None
        self.folder = os.environ.get("SOAK_INSPECT_DIR", "")
        self.every = float(os.environ.get("SOAK_INSPECT_EVERY", "10"))
        self.reactor = reactor
        self.n = 0
        self.t0 = time.monotonic()
        thresholds = os.environ.get("SOAK_GC_THRESHOLDS")
        if thresholds:
            # After wsglue's CollectorTuning has set its own (on start).
            reactor.callWhenRunning(gc.set_threshold, *map(int, thresholds.split(",")))
        self.loop = LoopingCall(self.dump)
        self.loop.clock = reactor
        if self.folder:
            reactor.callWhenRunning(self.loop.start, self.every, False)

    def received(self, sid: str, conn: Any, message: Any) -> Optional[str]:
        if self._pingPong is not None:
            return self._pingPong.received(sid, conn, message)
        return "pong" if message == "ping" else "ok"

    def _factory(self) -> Any:
        for obj in gc.get_referrers(self.registry):
            if isinstance(obj, dict):
                for owner in gc.get_referrers(obj):
                    if getattr(owner, "registry", None) is self.registry and hasattr(owner, "buildProtocol"):
                        return owner
        return None

    def dump(self) -> None:
        import tracemalloc

        started = time.monotonic()
        self.n += 1
        counts: Dict[str, int] = {}
        sizes = _wsglueModuleContainers()
        try:
            from autobahn.websocket.protocol import WebSocketProtocol
        except ImportError:
            WebSocketProtocol = None
        for generation in range(3):
            # WebSocket connections per generation of the collector, and
            # how many of them are closed (garbage it has not reached yet).
            conns = closed = 0
            for obj in gc.get_objects(generation):
                t = type(obj)
                name = f"{t.__module__}.{t.__qualname__}"
                counts[name] = counts.get(name, 0) + 1
                if WebSocketProtocol is not None and isinstance(obj, WebSocketProtocol):
                    conns += 1
                    closed += obj.state == WebSocketProtocol.STATE_CLOSED
            sizes[f"gc.gen{generation}.connections"] = conns
            sizes[f"gc.gen{generation}.closedConnections"] = closed
        factory = self._factory()
        if factory is not None:
            sizes.update(_instanceContainers(factory, "factory"))
            limits = getattr(factory, "limits", None)
            if limits is not None:
                sizes.update(_instanceContainers(limits, "factory.limits"))
            sizes.update(_instanceContainers(self.registry, "registry"))
            sizes["registry.connections"] = getattr(self.registry, "connectionCount", -1)
        sizes["reactor.delayedCalls"] = len(self.reactor.getDelayedCalls())
        sizes["reactor.selectables"] = len(getattr(self.reactor, "_selectables", ()))
        sizes["gc.frozen"] = gc.get_freeze_count() if hasattr(gc, "get_freeze_count") else -1
        sizes.update({f"gc.count{i}": c for i, c in enumerate(gc.get_count())})
        sizes["gc.collections2"] = gc.get_stats()[2]["collections"]
        sizes["sys.allocatedblocks"] = sys.getallocatedblocks()
        sizes.update(_mallinfo())
        sizes.update(_pymallocArenas())
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    sizes[line.split(":")[0]] = int(line.split()[1]) * 1024
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            sizes["tracemalloc.current"] = current
            snapshot = tracemalloc.take_snapshot()
            with open(os.path.join(self.folder, f"snap-{self.n:04d}.pickle"), "wb") as f:
                pickle.dump(snapshot, f)
        sample = {
            "n": self.n,
            "t": round(time.monotonic() - self.t0, 1),
            "sizes": sizes,
            "types": counts,
            "dumpSeconds": round(time.monotonic() - started, 2),
        }
        with open(os.path.join(self.folder, f"inspect-{self.n:04d}.json"), "w") as f:
            json.dump(sample, f)


def compareInspections(folder: str, first: int, last: int, top: int = 25) -> str:
    """
    What grew between inspection C{first} and C{last} of C{folder}.
    """

    def load(n: int) -> Dict[str, Any]:
        with open(os.path.join(folder, f"inspect-{n:04d}.json")) as f:
            return json.load(f)

    a, b = load(first), load(last)
    lines = [f"inspections {first} (t={a['t']} s) -> {last} (t={b['t']} s)"]
    lines.append("  sizes that changed:")
    for key in sorted(set(a["sizes"]) | set(b["sizes"])):
        x, y = a["sizes"].get(key, 0), b["sizes"].get(key, 0)
        if x != y:
            lines.append(f"    {key:50s} {x:>14,} -> {y:>14,} ({y - x:+,})")
    growth = sorted(
        ((b["types"].get(k, 0) - a["types"].get(k, 0), k) for k in set(a["types"]) | set(b["types"])), reverse=True
    )
    lines.append("  live objects (gc-tracked) by type, largest growth:")
    for d, k in growth[:top]:
        if d <= 0:
            break
        lines.append(f"    {k:60s} {a['types'].get(k, 0):>9,} -> {b['types'].get(k, 0):>9,} ({d:+,})")
    snapA = os.path.join(folder, f"snap-{first:04d}.pickle")
    snapB = os.path.join(folder, f"snap-{last:04d}.pickle")
    if os.path.exists(snapA) and os.path.exists(snapB):
        with open(snapA, "rb") as f:
            sa = pickle.load(f)
        with open(snapB, "rb") as f:
            sb = pickle.load(f)
        for kind in ("lineno", "traceback"):
            lines.append(f"  tracemalloc, by {kind}, largest growth:")
            for stat in sb.compare_to(sa, kind)[: top if kind == "lineno" else 8]:
                if stat.size_diff <= 0:
                    continue
                lines.append(
                    f"    {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8,} blocks  "
                    f"{stat.traceback[0] if kind == 'lineno' else ''}"
                )
                if kind == "traceback":
                    for frame in stat.traceback.format(most_recent_first=True)[:24]:
                        lines.append(f"        {frame}")
    return "\n".join(lines)


# -- the soak ------------------------------------------------------------------


def slope(points: Sequence[Tuple[float, float]]) -> float:
    """
    Least-squares slope of C{points} (x, y).
    """
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def parseArgs(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    p.add_argument(
        "--connections",
        type=int,
        default=2000,
        help="WebSocket connections held, churning ones included (default 2000)",
    )
    p.add_argument("--churn", type=int, default=200, help="of those, how many reconnect continuously (default 200)")
    p.add_argument(
        "--hold", type=float, default=1.0, help="seconds a churning connection stays open, on average (default 1.0)"
    )
    p.add_argument(
        "--keep-cookie",
        action="store_true",
        help="churning clients send back their session cookie (default: every reconnect is a new session)",
    )
    p.add_argument("--broadcast-interval", type=float, default=0.1, help="wsglue's --broadcast-interval (default 0.1)")
    p.add_argument(
        "--no-levers",
        action="store_true",
        help="pass --no-levers to wsglue (or WSGLUE_NO_LEVERS=1 if it lacks the option)",
    )
    p.add_argument("--sample", type=float, default=10.0, help="seconds between rows (default 10)")
    p.add_argument(
        "--source", default="127.0.0.2", help="the clients' source address, in 127.0.0.0/8 (default 127.0.0.2)"
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set in the daemon's environment (repeatable)"
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for twistd wsglue (repeatable)",
    )
    p.add_argument("--python", default=sys.executable, help="the Python that runs twistd")
    p.add_argument(
        "--tree",
        default=ROOT,
        metavar="DIR",
        help="run the daemon from this checkout of wsglue (e.g. a copy with a fix; default: this one)",
    )
    p.add_argument(
        "--inspect", metavar="DIR", help="write what the daemon holds to DIR every --sample seconds (see above)"
    )
    p.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --inspect: trace allocations with this many frames",
    )
    p.add_argument(
        "--gc-thresholds",
        metavar="A,B,C",
        help="the daemon's gc.set_threshold once it runs, overriding wsglue's (uses the handler bench.soak:Inspecting)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the rows and verdict as JSON")
    p.add_argument("--client", nargs=6, help=argparse.SUPPRESS)
    config = p.parse_args(argv)
    if config.client is None:
        if not 0 <= config.churn <= config.connections:
            p.error("--churn must be between 0 and --connections")
        if not config.source.startswith("127."):
            p.error("--source must be a loopback address (127.0.0.0/8)")
        if config.minutes <= 0 or config.minutes > 24 * 60:
            p.error("--minutes must be more than 0 and at most a day")
        if config.tracemalloc and not config.inspect:
            p.error("--tracemalloc needs --inspect")
        if config.gc_thresholds:
            try:
                if len([int(x) for x in config.gc_thresholds.split(",")]) != 3:
                    raise ValueError
            except ValueError:
                p.error("--gc-thresholds takes three whole numbers: A,B,C")
    return config


def run(config: argparse.Namespace) -> int:
    port = freePort()
    env = dict(os.environ)
    tree = os.path.abspath(config.tree)
    # The tree first (python -c puts the working folder first too), then
    # this checkout for bench.soak:Inspecting.
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([tree, ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    )
    extraEnv: Dict[str, str] = {}
    for item in config.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SoakError(f"--env {item!r}: use NAME=VALUE")
        extraEnv[name] = value
    argv = [
        config.python,
        "-c",
        TWISTD,
        "--pidfile=",
        "-n",
        "wsglue",
        "--port",
        f"tcp:{port}:interface=127.0.0.1:backlog=1024",
        "--broadcast-interval",
        str(config.broadcast_interval),
        "--ping-interval",
        "0",
    ]
    if config.no_levers:
        if knowsOption(config.python, env, "--no-levers", tree):
            argv.append("--no-levers")
        else:
            extraEnv["WSGLUE_NO_LEVERS"] = "1"
    if config.inspect or config.gc_thresholds:
        if not os.path.exists(os.path.join(tree, "bench", "soak.py")):
            # The daemon imports bench from the tree it runs from.
            raise SoakError(f"--inspect and --gc-thresholds need bench/soak.py in {tree}")
        argv += ["--handler", "bench.soak:Inspecting"]
    if config.gc_thresholds:
        extraEnv["SOAK_GC_THRESHOLDS"] = config.gc_thresholds
    if config.inspect:
        os.makedirs(config.inspect, exist_ok=True)
        extraEnv["SOAK_INSPECT_DIR"] = os.path.abspath(config.inspect)
        extraEnv["SOAK_INSPECT_EVERY"] = str(config.sample)
        if config.tracemalloc:
            extraEnv["PYTHONTRACEMALLOC"] = str(config.tracemalloc)
    argv += config.server_arg
    env.update(extraEnv)
    shown = " ".join(f"{k}={v}" for k, v in extraEnv.items() if not k.startswith("SOAK_INSPECT"))
    print(
        f"server: {shown + ' ' if shown else ''}twistd {' '.join(argv[3:])}"
        f"{'' if tree == ROOT else ' (from ' + tree + ')'}",
        flush=True,
    )
    print(
        f"load: {config.connections} connections from {config.source}, {config.churn} of them "
        f"reconnecting (held ~{config.hold} s each, "
        f"{'same session' if config.keep_cookie else 'a new session each time'}); "
        f"{config.minutes} minutes, a row every {config.sample} s",
        flush=True,
    )

    children: List[Child] = []
    rows: List[Dict[str, Any]] = []
    # The client's last report.
    latest: Dict[str, Any] = {}
    try:
        server = Child("wsglue", argv, env, cwd=tree)
        children.append(server)
        server.waitForLine(READY, 60)
        server.quiet()
        clientEnv = dict(os.environ)
        clientEnv["PYTHONPATH"] = ROOT + os.pathsep + clientEnv.get("PYTHONPATH", "")
        client = Child(
            "client",
            [
                sys.executable,
                "-m",
                "bench.soak",
                "--client",
                str(port),
                str(config.connections - config.churn),
                str(config.churn),
                str(config.hold),
                "1" if config.keep_cookie else "0",
                config.source,
            ],
            clientEnv,
        )
        children.append(client)

        def follow() -> None:
            while True:
                line = client.lines.get()
                if line == "\0":
                    return
                if line.startswith("{"):
                    try:
                        latest.update(json.loads(line))
                    except ValueError:
                        pass

        threading.Thread(target=follow, daemon=True).start()
        print(
            f"\n{'min':>6} {'RSS MB':>8} {'files':>6} {'open':>6} {'reconnects':>10} "
            f"{'failed':>6} {'srv CPU%':>8} {'cli CPU%':>8}",
            flush=True,
        )
        t0 = time.monotonic()
        end = t0 + config.minutes * 60
        lastCpu: Dict[int, Tuple[float, float]] = {}
        nextSample = t0
        while True:
            now = time.monotonic()
            if now >= nextSample:
                for child in children:
                    if not child.alive():
                        raise SoakError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
                rss, files, cpu = procStats(server.pid)
                _, _, ccpu = procStats(client.pid)
                pct = []
                for pid, c in ((server.pid, cpu), (client.pid, ccpu)):
                    before = lastCpu.get(pid)
                    pct.append(100 * (c - before[1]) / (now - before[0]) if before else 0.0)
                    lastCpu[pid] = (now, c)
                row = {
                    "minute": round((now - t0) / 60, 3),
                    "rssMB": round(rss, 1),
                    "files": files,
                    "open": latest.get("open", 0),
                    "reconnects": latest.get("reconnects", 0),
                    "failures": latest.get("failures", 0),
                    "ramp": bool(latest.get("ramp", True)),
                    "serverCpuPct": round(pct[0], 1),
                    "clientCpuPct": round(pct[1], 1),
                }
                rows.append(row)
                print(
                    f"{row['minute']:6.2f} {rss:8.1f} {files:6d} {row['open']:6d} "
                    f"{row['reconnects']:10,d} {row['failures']:6d} {pct[0]:8.1f} {pct[1]:8.1f}"
                    f"{'  (ramp)' if row['ramp'] else ''}",
                    flush=True,
                )
                nextSample += config.sample
                if now >= end:
                    break
            time.sleep(max(0.0, min(nextSample, end + 0.001) - time.monotonic()))
    finally:
        # The client first (its connections close cleanly), then the daemon.
        for child in reversed(children):
            child.stop()

    print(
        f"\nclient: {latest.get('reconnects', 0):,} reconnects, {latest.get('failures', 0):,} failed"
        f" openings, {latest.get('steadyDrops', 0):,} steady connections dropped by the server,"
        f" {latest.get('closeTimeouts', 0):,} closes unanswered within 5 s",
        flush=True,
    )
    verdict = judge(rows)
    print(verdict["text"], flush=True)
    if config.inspect:
        after = [r for r in rows if not r["ramp"]]
        samples = sorted(
            int(n[8:12]) for n in os.listdir(config.inspect) if n.startswith("inspect-") and n.endswith(".json")
        )
        if len(samples) >= 2:
            # The first sample taken once the ramp was over.
            firstAfter = len(rows) - len(after)
            first = next((n for n in samples if n > firstAfter), samples[0])
            print("\n" + compareInspections(config.inspect, first, samples[-1]), flush=True)
    if config.json:
        with open(config.json, "w") as f:
            json.dump(
                {
                    "argv": argv[3:],
                    "env": extraEnv,
                    "config": vars(config),
                    "rows": rows,
                    "verdict": {k: v for k, v in verdict.items() if k != "text"},
                },
                f,
                indent=1,
            )
    return 0


# The last half's RSS slope (MB/min) under which the run levelled off.
LEVEL = 0.1


def judge(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """
    The slope of RSS over the last half of the run (after the ramp), in
    MB/min and MB per 1,000 reconnects, and whether it levelled off: a
    last-half slope under 0.1 MB/min (3 MB over 30 minutes).
    """
    steady = [r for r in rows if not r["ramp"]]
    if len(steady) < 4:
        return {"text": "verdict: too short to judge (fewer than 4 rows after the ramp)"}
    half = steady[len(steady) // 2 :]
    first = steady[: len(steady) // 2 + 1]
    lastSlope = slope([(r["minute"], r["rssMB"]) for r in half])
    firstSlope = slope([(r["minute"], r["rssMB"]) for r in first])
    perK = slope([(r["reconnects"] / 1000, r["rssMB"]) for r in half])
    levelled = lastSlope < LEVEL
    minutes = half[-1]["minute"] - half[0]["minute"]
    text = (
        f"verdict: RSS {steady[0]['rssMB']:.1f} -> {steady[-1]['rssMB']:.1f} MB after the ramp "
        f"({steady[-1]['reconnects'] - steady[0]['reconnects']:,} reconnects); "
        f"first half {firstSlope:+.3f} MB/min, last half ({minutes:.1f} min) "
        f"{lastSlope:+.3f} MB/min = {perK:+.4f} MB per 1,000 reconnects; "
        + ("levelled off" if levelled else "did NOT level off")
        + f" (levelled: under {LEVEL} MB/min)"
    )
    return {
        "text": text,
        "firstHalfMBPerMin": firstSlope,
        "lastHalfMBPerMin": lastSlope,
        "lastHalfMBPer1000Reconnects": perK,
        "levelledOff": levelled,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parseArgs(argv)
    if config.client is not None:
        port, steady, churn, hold, keep, source = config.client
        asyncio.run(clientMain(int(port), int(steady), int(churn), float(hold), keep == "1", source))
        return 0

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a soak started in the background of a script inherits
    # it ignored, and would not stop on it otherwise.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        return run(config)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the soak started is stopped", file=sys.stderr)
        return 130
    except SoakError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
