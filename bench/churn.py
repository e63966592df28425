"""
Churn: many connect/close cycles against a wsglue daemon, then check that
nothing leaked — the registry is empty (every "session opened" log line has
its "session closed"), the daemon's open files are back to their baseline
and its RSS grew less than 10 %.

The full count, as the hardening issue asks::

    python -m bench.churn --cycles 10000

CI runs a smaller count through the same code (tests/test_churn.py).
Cycles run several at a time; they mix clean closes, closes without a close
frame (TCP abort after the handshake), a ping/pong before closing, and
peers that abort in the middle of the handshake.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.common import TWISTD, CollectOutput, freePort  # noqa: E402


def daemonStats(pid: int) -> Dict[str, int]:
    """
    The open files and the resident memory (kB) of process C{pid}.
    """
    files = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"files": files, "rssKiB": rss}


class _ChurnClient(WebSocketClientProtocol):
    def __init__(self) -> None:
        WebSocketClientProtocol.__init__(self)
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.pong: Deferred = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.pong.called:
            self.pong.callback(payload)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not self.closed.called:
            self.closed.callback(code)


class _Dropper(protocol.Protocol):
    """
    Sends half a handshake, then aborts.
    """

    def __init__(self) -> None:
        self.lost: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n")
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@inlineCallbacks
def oneCycle(reactor: Any, port: int, kind: int) -> Any:
    """
    One connect/close cycle of the given C{kind} (0-3, see the module
    docstring).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    if kind == 3:
        dropper = yield endpoint.connect(protocol.Factory.forProtocol(_Dropper))
        yield dropper.lost
        return
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
    factory.protocol = _ChurnClient
    factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=5)
    client = yield endpoint.connect(factory)
    yield client.opened
    if kind == 2:
        client.sendMessage(b"ping")
        answer = yield client.pong
        if answer != b"pong":
            raise AssertionError(f"ping answered {answer!r}")
    if kind == 1:
        # No close frame: the server must notice the TCP close on its own.
        client.transport.abortConnection()
    else:
        client.sendClose(1000)
    yield client.closed


@inlineCallbacks
def churn(reactor: Any, port: int, cycles: int, parallel: int = 8) -> Any:
    """
    Run C{cycles} cycles, C{parallel} at a time.

    @return: a Deferred firing with the number of cycles done.
    """
    counter = iter(range(cycles))
    done: List[int] = [0]

    @inlineCallbacks
    def worker() -> Any:
        for i in counter:
            yield oneCycle(reactor, port, i % 4)
            done[0] += 1

    results = yield DeferredList([worker() for _ in range(parallel)], fireOnOneErrback=True, consumeErrors=True)
    del results
    return done[0]


def sessionBalance(output: str) -> int:
    """
    Sessions opened minus sessions closed, from the daemon's log.
    """
    return output.count("session opened: ") - output.count("session closed: ")


@inlineCallbacks
def measure(reactor: Any, port: int, pid: int, output: Any, cycles: int, warmup: int, parallel: int) -> Any:
    """
    Warm up, take the baseline, churn, wait for the registry to drain, and
    return the figures (a dict).  C{output} returns the daemon's log so far.
    """
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def drained() -> Any:
        # Bounded: at most 20 s for the daemon to log every close.
        for _ in range(2000):
            if sessionBalance(output()) == 0:
                return True
            yield deferLater(reactor, 0.01, lambda: None)
        return False

    yield churn(reactor, port, warmup, parallel)
    yield drained()
    before = daemonStats(pid)
    done = yield churn(reactor, port, cycles, parallel)
    empty = yield drained()
    # The last aborted peers may still be on their way out of the kernel.
    after = daemonStats(pid)
    for _ in range(500):
        if after["files"] <= before["files"]:
            break
        yield deferLater(reactor, 0.01, lambda: None)
        after = daemonStats(pid)
    return {
        "cycles": done,
        "registryEmpty": empty,
        "filesBefore": before["files"],
        "filesAfter": after["files"],
        "rssBeforeKiB": before["rssKiB"],
        "rssAfterKiB": after["rssKiB"],
        "rssGrowth": round((after["rssKiB"] - before["rssKiB"]) / before["rssKiB"], 4),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args(argv)

    from twisted.internet.task import react

    port = freePort()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")

    @inlineCallbacks
    def run(reactor: Any) -> Any:
        daemon = CollectOutput()
        process = reactor.spawnProcess(
            daemon,
            sys.executable,
            [
                sys.executable,
                "-c",
                TWISTD,
                "--pidfile=",
                "-n",
                "wsglue",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--broadcast-interval",
                "0",
            ],
            env=env,
            path=ROOT,
        )
        from twisted.internet.task import deferLater

        try:
            for _ in range(2000):
                if b"started websocket server at" in daemon.output:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            started = reactor.seconds()
            figures = yield measure(
                reactor,
                port,
                process.pid,
                lambda: daemon.output.decode("utf-8", "replace"),
                args.cycles,
                args.warmup,
                args.parallel,
            )
            figures["seconds"] = round(reactor.seconds() - started, 1)
        finally:
            process.signalProcess("TERM")
            yield daemon.ended
        log = daemon.output.decode("utf-8", "replace")
        figures["unhandledErrors"] = log.count("Unhandled") + log.count("Traceback")
        for name, value in figures.items():
            print(f"{name}: {value}")
        ok = (
            figures["registryEmpty"]
            and figures["filesAfter"] <= figures["filesBefore"]
            and figures["rssGrowth"] < 0.10
            and not figures["unhandledErrors"]
        )
        print("PASS" if ok else "FAIL")
        if not ok:
            raise SystemExit(1)

    react(run)
    return 0


if __name__ == "__main__":
    main()
