"""
C{--workers N}: one parent process binds the listening socket once and runs
N worker processes that adopt it; the kernel hands each new connection to
whichever worker accepts it first.

The parent serves no connection itself.  It says where it listens, starts
the workers (C{twistd -n wsglue} with the parent's own options, told by two
environment variables which inherited file descriptor to adopt), relays
their log lines, restarts a worker that dies (with backoff), and on SIGTERM
or SIGINT stops them all (each closes its WebSockets with 1001) and exits 0:
from the moment its port is bound, while it is still starting workers
included.  SIGHUP is logged and ignored, by the parent and by each worker.

A worker watches its standard input, a pipe from the parent: if the parent
dies without stopping it, the pipe closes and the worker stops too.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import FileLogObserver, Logger, LogLevel, eventAsText
from twisted.logger import formatEvent as _formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from wsglue.levers import Levers
from wsglue.process.service import CannotListen, describeAddress, stopCleanlyOnSignals

_log = Logger()

# The level a worker's line is relayed at, by the name it starts with
# (workerLines); a line without one is relayed whole, at info.
_RELAYED = {
    "debug": LogLevel.info,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

# How the parent tells a worker what to adopt.
FD_VARIABLE = "_WSGLUE_WORKER_FD"
FAMILY_VARIABLE = "_WSGLUE_WORKER_FAMILY"
INHERITED_FD = 3
# The same for the HTTP API's socket (--api), and the folder where the
# workers leave their counters for one another (wsglue.api.shared).
API_FD_VARIABLE = "_WSGLUE_WORKER_API_FD"
API_FAMILY_VARIABLE = "_WSGLUE_WORKER_API_FAMILY"
API_INHERITED_FD = 4
METRICS_VARIABLE = "_WSGLUE_WORKER_METRICS"

# twistd's entry point, run by this Python in a worker.
_TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

# Ports a worker can adopt: the parent binds them with a plain socket.  Not
# unix: (Twisted unlinks the socket's path whenever any worker's port
# closes) and not ssl: (each worker would need its own TLS layer).
ADOPTABLE = ("tcp", "tcp6")


def adoptable(description: str) -> bool:
    """
    Whether the endpoint C{description} can be bound once and shared by
    workers: TCP only (see L{ADOPTABLE}).
    """
    kind = description.split(":", 1)[0].strip().lower()
    return kind in ADOPTABLE or kind.isdigit()


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A server endpoint whose C{listen} adopts an already listening socket
    (inherited from the parent) instead of binding one.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> Deferred:
        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except Exception:
            return defer.fail()
        # adoptStreamPort works on a copy of the descriptor.
        os.close(self.fd)
        return defer.succeed(port)


def workerEndpoint(
    reactor: Any,
    environ: Mapping[str, str] = os.environ,
    fdVariable: str = FD_VARIABLE,
    familyVariable: str = FAMILY_VARIABLE,
) -> Optional[AdoptedEndpoint]:
    """
    In a worker, the endpoint adopting the parent's socket (by default the
    listening port's; L{API_FD_VARIABLE} for the API's); otherwise None.
    """
    fd = environ.get(fdVariable)
    if not fd:
        return None
    return AdoptedEndpoint(reactor, int(fd), int(environ.get(familyVariable, socket.AF_INET)))


class _ParentWatch(protocol.Protocol):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            _log.warn("the parent process is gone; stopping")
            self.reactor.stop()


def watchParent(reactor: Any) -> None:
    """
    Stop this worker when its standard input (the pipe from the parent)
    closes, so that a parent killed with SIGKILL leaves no orphan behind.
    """
    from twisted.internet import stdio

    # Our stdout stays with the log observer; StandardIO only reads stdin.
    sink = os.open(os.devnull, os.O_WRONLY)
    standardIO: Any = stdio.StandardIO  # the POSIX one (the stubs name Windows')
    standardIO(_ParentWatch(reactor), stdin=0, stdout=sink, reactor=reactor)


def workerLogObserver() -> Any:
    """
    The log observer of a worker (C{twistd --logger}): plain lines on
    stdout, without timestamps, for the parent to relay under its own.
    With the speed levers, written once per reactor turn
    (L{wsglue.levers.logs.TurnFileLogObserver}); without, by Twisted's
    L{FileLogObserver}, a write per event.
    """
    from twisted.internet import reactor

    if Levers.current().on:
        from wsglue.levers.logs import TurnFileLogObserver, formatEvent

        return TurnFileLogObserver(sys.stdout, lambda event: workerLines(event, formatEvent), reactor)
    return FileLogObserver(sys.stdout, workerLines)


def workerLines(
    event: Dict[str, Any], formatEvent: Callable[[Dict[str, Any]], Optional[str]] = _formatEvent
) -> Optional[str]:
    """
    The lines a worker writes for C{event}: each line of its text, after
    the name of its level (C{info session opened: 3f2a9c1e}).
    """
    text: Optional[str]
    if "log_failure" in event:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    else:
        text = formatEvent(event)
    if not text:
        return None
    name = getattr(event.get("log_level"), "name", "info")
    return "".join(f"{name} {line}\n" for line in text.splitlines())


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: Optional[int] = None
        self.ended: Deferred = Deferred()
        self.startedAt = pool.reactor.seconds()
        self._buffer = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport  # a process transport: its pid
        self.pid = transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self._buffer += data
        complete, newline, self._buffer = self._buffer.rpartition(b"\n")
        if newline:
            self._relay(complete)
        if len(self._buffer) > 65536:
            self._relay(self._buffer)
            self._buffer = b""

    def _relay(self, lines: bytes) -> None:
        """
        Log each of C{lines} (as L{workerLines} wrote them) at its level,
        labelled with the worker's pid.
        """
        emit, pid = _log.emit, self.pid
        # Whole lines (no UTF-8 sequence spans a newline), but for one of
        # more than 64 KiB, relayed in pieces.
        for text in lines.decode("utf-8", "replace").split("\n"):
            text = text.rstrip()
            if not text:
                continue
            name, _, rest = text.partition(" ")
            level = _RELAYED.get(name)
            if level is None:
                level, rest = LogLevel.info, text
            emit(level, "[worker {pid}] {line}", pid=pid, line=rest)

    def processEnded(self, reason: Failure) -> None:
        if self._buffer:
            self._relay(self._buffer)
            self._buffer = b""
        value = reason.value
        status = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.pool.workerEnded(self, status, sig)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Bind C{endpoint} once, and keep C{count} workers serving it.

    @ivar workers: the running workers' protocols, by index.
    """

    # A twisted.internet.tcp.Port (the parent stops its reading, the workers
    # inherit its fileno()), not just an IListeningPort.
    port: Any = None
    _signalsHandled = False
    stopTimeout = 10.0
    maxRestartDelay = 30.0

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        argv: List[str],
        count: int,
        reactor: Any,
        handleSignals: bool = False,
        environ: Optional[Mapping[str, str]] = None,
        api: Optional[Any] = None,
    ) -> None:
        """
        @param api: with C{--api}, the API's listening service
            (L{wsglue.api.service.ApiService}): the parent binds it too, and
            every worker adopts its socket and serves it.
        """
        self.endpoint = endpoint
        self.api = api
        self.metricsFolder: Optional[str] = None
        self.description = description
        self.argv = argv
        self.count = count
        self.reactor = reactor
        self.handleSignals = handleSignals
        self.environ = dict(os.environ if environ is None else environ)
        self.workers: Dict[int, _WorkerProtocol] = {}
        self._failures: Dict[int, int] = {}
        self._restarts: Dict[int, Any] = {}
        self._stopping = False

    def bind(self) -> None:
        """
        Install the signal handling (with C{handleSignals}), then bind the
        endpoint, unless it is bound already: as L{WebSocketService.bind}.

        A SIGTERM or SIGINT from then on, while the workers are being
        started included, starts no more of them and stops those started so
        far (L{stopService}).

        @raise CannotListen: if the endpoint cannot be bound.
        """
        if self.port is not None:
            return
        if self.handleSignals and not self._signalsHandled:
            stopCleanlyOnSignals(self.reactor, "stopping the workers", self._stopRequested)
            self._signalsHandled = True
        results: list = []
        self.endpoint.listen(_NoConnections()).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            why = results[0].getErrorMessage() if results else "did not complete"
            raise CannotListen(f"wsglue: cannot listen on {self.description}: {why}")
        self.port = results[0]
        # The parent only holds the socket; the workers accept.
        self.port.stopReading()
        if self.api is not None:
            self.api.bind(_NoConnections())
            self.api.port.stopReading()

    def _stopRequested(self) -> None:
        # From the signal handler: no worker is started from now on; the
        # reactor's stop then runs stopService, which stops those running.
        self._stopping = True

    def privilegedStartService(self) -> None:
        # Bind before privileges are shed and before the reactor runs, so a
        # port that cannot be bound ends start-up at once, as without workers.
        self.bind()
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.bind()
        Service.startService(self)
        secure = self.description.startswith(("ssl:", "tls:"))
        _log.info(
            "started websocket server at {url}",
            url=describeAddress(self.port, secure),
            workers=self.count,
        )
        if self.api is not None:
            import tempfile

            from wsglue.api.service import describeHTTP

            self.metricsFolder = tempfile.mkdtemp(prefix="wsglue-metrics-")
            _log.info("started api server at {url}", url=describeHTTP(self.api.port, self.api.description))
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        family = getattr(self.port, "addressFamily", socket.AF_INET)
        env = dict(self.environ)
        env[FD_VARIABLE] = str(INHERITED_FD)
        env[FAMILY_VARIABLE] = str(int(family))
        childFDs: Dict[int, Any] = {0: "w", 1: "r", 2: "r", INHERITED_FD: self.port.fileno()}
        if self.api is not None:
            env[API_FD_VARIABLE] = str(API_INHERITED_FD)
            env[API_FAMILY_VARIABLE] = str(int(getattr(self.api.port, "addressFamily", socket.AF_INET)))
            env[METRICS_VARIABLE] = self.metricsFolder or ""
            childFDs[API_INHERITED_FD] = self.api.port.fileno()
        argv = [
            sys.executable,
            "-c",
            _TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger=wsglue.process.workers.workerLogObserver",
            "wsglue",
            *self.argv,
            "--workers=1",
        ]
        proto = _WorkerProtocol(self, index)
        self.reactor.spawnProcess(
            proto,
            sys.executable,
            argv,
            env=env,
            path=os.getcwd(),
            childFDs=childFDs,
        )
        self.workers[index] = proto
        _log.info("started worker {index} (pid {pid})", index=index, pid=proto.pid)

    def workerEnded(self, proto: _WorkerProtocol, status: Optional[int], sig: Optional[int]) -> None:
        """
        A worker exited: log it and, unless we are stopping, start another
        in its place after a delay that grows while workers keep dying young.
        """
        index = proto.index
        if self.workers.get(index) is proto:
            del self.workers[index]
        if self.metricsFolder is not None:
            # Its counts go with it (Prometheus sees a counter reset).
            from wsglue.api.shared import forget

            forget(self.metricsFolder, proto.pid)
        how = f"signal {signal.Signals(sig).name}" if sig else f"status {status}"
        if self._stopping:
            _log.info("worker {index} (pid {pid}) stopped ({how})", index=index, pid=proto.pid, how=how)
            return
        lived = self.reactor.seconds() - proto.startedAt
        failures = 0 if lived > self.maxRestartDelay else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        delay = min(0.5 * 2 ** (failures - 1), self.maxRestartDelay) if failures else 0.5
        _log.warn(
            "worker {index} (pid {pid}) exited ({how}); restarting it in {delay:.1f}s",
            index=index,
            pid=proto.pid,
            how=how,
            delay=delay,
        )
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for proto in workers:
            _signal(proto, "TERM")
        if workers:
            waiting = defer.DeferredList([p.ended for p in workers])
            waiting.addTimeout(self.stopTimeout, self.reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                for proto in list(self.workers.values()):
                    _log.warn("worker pid {pid} did not stop in time; killing it", pid=proto.pid)
                    _signal(proto, "KILL")
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        if self.api is not None and self.api.port is not None:
            yield self.api.port.stopListening()
            self.api.port = None
        if self.metricsFolder is not None:
            import shutil

            shutil.rmtree(self.metricsFolder, ignore_errors=True)
            self.metricsFolder = None


def _signal(proto: _WorkerProtocol, name: str) -> None:
    try:
        transport: Any = proto.transport
        transport.signalProcess(name)
    except Exception:
        pass  # already gone


class _NoConnections(protocol.Factory):
    noisy = False

    # The parent never accepts (it stops reading at once); should a
    # connection slip through, it is closed rather than served.
    def buildProtocol(self, addr: Any) -> None:
        return None
