"""
A private C{redis-server} for tests and benchmarks: on a free loopback port,
in a temporary folder, with persistence off, stopped by its PID.

From a trial test (the server is stopped when the test ends)::

    redis = yield startRedis(self)
    redis.url            # "redis://127.0.0.1:PORT/0"
    yield redis.stop()   # and start again on the same port:
    yield redis.start()

From a script (blocking, no reactor)::

    with RedisServer() as redis:
        ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any, List, Optional

from tests.ports import freePort

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _answersPing(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    One C{redis-server} process that this object started and alone stops.

    @ivar port: its loopback port; the same across L{stopNow}/L{startNow}.
    @ivar url: the C{redis://} URL of database 0.
    """

    def __init__(self, port: Optional[int] = None, password: Optional[str] = None) -> None:
        self.port = port or freePort()
        self.password = password
        self.folder = tempfile.mkdtemp(prefix="wsglue-redis-")
        self.process: Optional[subprocess.Popen] = None
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> List[str]:
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.folder,
            "--logfile",
            os.path.join(self.folder, "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def spawn(self) -> None:
        """
        Start the process without waiting for it to answer.
        """
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        """
        Whether the server answers on its port (with a password, any answer).
        """
        if self.process is None or self.process.poll() is not None:
            return False
        return _answersPing(self.port) if not self.password else _listening(self.port)

    def kill(self) -> None:
        """
        Send SIGKILL to the process (if it still runs) without waiting.
        """
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)

    def reaped(self) -> bool:
        """
        Whether the process has exited (and is reaped).
        """
        return self.process is None or self.process.poll() is not None

    # -- blocking use, for scripts --------------------------------------------

    def startNow(self, timeout: float = 10) -> "RedisServer":
        self.spawn()
        for _ in range(int(timeout / 0.05)):
            if self.ready():
                return self
            try:
                # Poll with a bound: wait for the process to exit, at most
                # 50 ms, then ask again whether it answers.
                self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            break
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stopNow(self) -> None:
        self.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def cleanup(self) -> None:
        self.stopNow()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.startNow()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class TrialRedis:
    """
    A L{RedisServer} driven from a running reactor: L{start} and L{stop}
    return Deferreds and never block the reactor.
    """

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.port = server.port
        self.url = server.url

    def start(self, timeout: float = 10) -> Any:
        from tests.common import waitFor

        self.server.spawn()
        return waitFor(self.server.ready, timeout=timeout, interval=0.05)

    def stop(self, timeout: float = 10) -> Any:
        from tests.common import waitFor

        self.server.kill()
        return waitFor(self.server.reaped, timeout=timeout, interval=0.02)


def startRedis(testCase: Any, password: Optional[str] = None) -> Any:
    """
    Start a private redis-server for C{testCase}; it is stopped (by its PID)
    and its folder removed when the test ends.  Fires with a L{TrialRedis}.

    Skips the test if C{redis-server} is not installed.
    """
    from twisted.trial.unittest import SkipTest

    if not os.path.exists(REDIS_SERVER):
        raise SkipTest("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(password=password)
    redis = TrialRedis(server)

    def cleanup() -> Any:
        d = redis.stop()
        d.addBoth(lambda r: shutil.rmtree(server.folder, ignore_errors=True) or r)
        return d

    testCase.addCleanup(cleanup)
    d = redis.start()
    d.addCallback(lambda _: redis)
    return d
