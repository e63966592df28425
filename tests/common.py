"""
Shared test helpers: a wsglue service on a real loopback port, a real
WebSocket client (Autobahn's, on the same reactor), and a real twistd
daemon in a child process.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import StringTransport

from tests.ports import freePort  # noqa: F401 (the suite imports it from here)
from wsglue.levers import Levers, offInEnvironment
from wsglue.tap import Options, makeService

# twistd's own entry point, as the console script runs it.
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def leversForSuite() -> Levers:
    """
    The speed levers as the suite runs them: on, unless C{WSGLUE_NO_LEVERS=1}
    runs the whole suite on the plain path.
    """
    plain = offInEnvironment(os.environ)
    return Levers(not plain, "WSGLUE_NO_LEVERS" if plain else "")


def suiteReactor() -> str:
    """
    The reactor a daemon of this suite runs on: wsglue's with the levers,
    Twisted's epoll reactor without.
    """
    if leversForSuite().on:
        return "wsglue.levers.reactor.GlueEPollReactor"
    return "twisted.internet.epollreactor.EPollReactor"


def forceLevers(testCase: Any) -> None:
    """
    For the tests of the levers themselves: services (L{serve}) and daemons
    (L{spawnDaemon}) started by C{testCase} run with the speed levers,
    whatever the suite runs with.
    """
    testCase.patch(os, "environ", dict(os.environ, WSGLUE_NO_LEVERS="0"))
    testCase.patch(Levers, "_current", None)


def levered(factory: Any, site: Any = None) -> Any:
    """
    C{factory} (and C{site}, built on it) with the speed levers the suite
    runs with (L{leversForSuite}), as C{makeService} would apply them.
    """
    leversForSuite().apply(factory=factory, site=site)
    return factory


def withLevers(factory: Any, site: Any = None) -> Any:
    """
    C{factory} (and C{site}) with the speed levers on, whatever the suite
    runs with: for the tests of the levers themselves.
    """
    Levers(True).apply(factory=factory, site=site)
    return factory


def options(*argv: str) -> Options:
    """
    Parsed L{Options} for a service on a free loopback port, with the demo
    broadcast off unless C{argv} turns it on.
    """
    o = Options()
    o.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--broadcast-interval", "0", *argv])
    return o


class CollectOutput(protocol.ProcessProtocol):
    """
    A child process's output, kept as it arrives: C{out} (stdout), C{err}
    (stderr) and C{output} (both, in order of arrival).  C{ended} fires
    with its exit code.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.output = b""
        self.ended: Deferred = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        if fd == 1:
            self.out += data
        elif fd == 2:
            self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class RunningService:
    """
    A wsglue service started in this process on a free loopback port.
    """

    def __init__(self, *argv: str) -> None:
        self.service = makeService(options(*argv), reactor)
        self.service.startService()
        self.factory = self.service.factory
        self.registry = self.factory.registry
        self.port = self.service.getServiceNamed("websocket").port.getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> Deferred:
        return defer.maybeDeferred(self.service.stopService)


def serve(testCase: Any, *argv: str) -> RunningService:
    """
    Start a service for C{testCase}; it is stopped, and every connection
    closed, when the test ends.
    """
    running = RunningService(*argv)
    testCase.addCleanup(running.stop)
    return running


class Client(WebSocketClientProtocol):
    """
    A WebSocket client that queues what it receives and says how it closed.
    """

    def __init__(self) -> None:
        WebSocketClientProtocol.__init__(self)
        self.messages: DeferredQueue = DeferredQueue()
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.responseHeaders: Dict[str, str] = {}

    def onConnect(self, response: Any) -> None:
        self.responseHeaders = dict(response.headers)

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put(payload if isBinary else payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        self.closed.callback((self.remoteCloseCode, self.remoteCloseReason))

    def send(self, message: Any) -> None:
        if isinstance(message, str):
            self.sendMessage(message.encode("utf-8"))
        else:
            self.sendMessage(bytes(message), isBinary=True)

    def nextMessage(self, timeout: float = 5) -> Deferred:
        d = self.messages.get()
        d.addTimeout(timeout, reactor)
        return d

    @property
    def setCookie(self) -> Optional[str]:
        return self.responseHeaders.get("set-cookie")


def connect(
    testCase: Any,
    port: int,
    headers: Optional[Dict[str, str]] = None,
    path: str = "/",
    trust: Optional[bytes] = None,
    hostname: str = "127.0.0.1",
    protocols: Sequence[str] = (),
    clientProtocol: Any = None,
) -> Deferred:
    """
    Open a WebSocket to 127.0.0.1:C{port} with extra request C{headers};
    over TLS (C{wss://}) when C{trust} is the PEM certificate to trust, which
    must name C{hostname}; offering the subprotocols C{protocols}; with
    C{clientProtocol} (a L{Client} subclass) for the client.  Fires with
    the open L{Client}; fails if the handshake is refused.  The connection is dropped when the test ends.
    """
    scheme = "ws" if trust is None else "wss"
    factory = WebSocketClientFactory(
        f"{scheme}://{hostname}:{port}{path}", headers=headers or {}, protocols=list(protocols) or None
    )
    factory.protocol = clientProtocol or Client
    factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=2)
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    if trust is not None:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        options = optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(trust))
        endpoint = wrapClientTLS(options, endpoint)

    def opened(client: Client) -> Deferred:
        def cleanup() -> Deferred:
            if not client.closed.called:
                client.dropConnection(abort=True)
            return client.closed

        testCase.addCleanup(cleanup)
        return client.opened

    d = endpoint.connect(factory)
    d.addCallback(opened)
    return d


def cookieValue(setCookie: str) -> str:
    """
    The value in a C{Set-Cookie} header.
    """
    return setCookie.split(";", 1)[0].split("=", 1)[1]


@inlineCallbacks
def waitFor(predicate: Any, timeout: float = 5, interval: float = 0.01) -> Any:
    """
    Poll C{predicate} until it is true, at most C{timeout} seconds.
    """
    from twisted.internet.task import deferLater

    for _ in range(int(timeout / interval)):
        if predicate():
            return
        yield deferLater(reactor, interval, lambda: None)
    if not predicate():
        raise AssertionError(f"condition not met within {timeout}s: {predicate}")


class _DaemonProtocol(CollectOutput):
    def __init__(self) -> None:
        CollectOutput.__init__(self)
        self._waiting: List[Tuple[bytes, Deferred]] = []

    def childDataReceived(self, fd: int, data: bytes) -> None:
        CollectOutput.childDataReceived(self, fd, data)
        for item in list(self._waiting):
            if item[0] in self.output:
                self._waiting.remove(item)
                item[1].callback(self.output)

    def waitForOutput(self, text: bytes, timeout: float = 20) -> Deferred:
        d: Deferred = Deferred()
        if text in self.output:
            d.callback(self.output)
            return d
        self._waiting.append((text, d))
        d.addTimeout(timeout, reactor)
        return d

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode if reason.value.signal is None else -reason.value.signal)
        for text, d in self._waiting:
            if not d.called:
                d.errback(
                    AssertionError(f"daemon exited before printing {text!r}:\n{self.output.decode(errors='replace')}")
                )
        self._waiting = []


class Daemon:
    """
    C{twistd -n wsglue ARGS} as a child process of the test.

    @ivar output: everything it printed so far (stdout and stderr).
    """

    def __init__(self, proto: _DaemonProtocol, transport: Any) -> None:
        self._proto = proto
        self.transport = transport
        self.pid = transport.pid
        self.ended = proto.ended

    @property
    def output(self) -> str:
        return self._proto.output.decode("utf-8", errors="replace")

    def waitForOutput(self, text: str, timeout: float = 20) -> Deferred:
        return self._proto.waitForOutput(text.encode("utf-8"), timeout)

    def signal(self, name: str = "TERM") -> None:
        if not self.ended.called:
            self.transport.signalProcess(name)

    def stop(self) -> Deferred:
        """
        SIGTERM, then SIGKILL if it has not exited after 10 seconds.
        """
        if self.ended.called:
            return defer.succeed(None)
        self.signal("TERM")
        killer = reactor.callLater(10, self.signal, "KILL")
        self.ended.addBoth(lambda r: killer.active() and killer.cancel() or r)
        return self.ended


def spawnDaemon(
    testCase: Any,
    args: List[str],
    env: Optional[Dict[str, str]] = None,
    executable: Optional[str] = None,
    tac: Optional[str] = None,
    cwd: Optional[str] = None,
    twistdArgs: Sequence[str] = (),
    nodaemon: bool = True,
) -> Daemon:
    """
    Start C{twistd *twistdArgs -n wsglue *args} (or C{twistd -ny tac}) with
    this Python (or C{executable}); it is stopped when the test ends.  With
    C{nodaemon=False}, C{-n} and C{--pidfile=} are left out: C{twistdArgs}
    must then give a C{--pidfile} and a C{--logfile}.
    """
    python = executable or sys.executable
    foreground = ["--pidfile=", "-n"] if nodaemon else []
    if tac is not None:
        argv = [python, "-c", TWISTD, *twistdArgs, *foreground, "-y", tac]
    else:
        argv = [python, "-c", TWISTD, *twistdArgs, *foreground, "wsglue", *args]
    environ = dict(os.environ)
    if executable is None:
        # Run this checkout, plugin included, not whatever is installed.
        environ["PYTHONPATH"] = ROOT + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    proto = _DaemonProtocol()
    transport = reactor.spawnProcess(
        proto, python, argv, env=environ, path=cwd or ROOT, childFDs={0: "w", 1: "r", 2: "r"}
    )
    daemon = Daemon(proto, transport)
    testCase.addCleanup(daemon.stop)
    return daemon


def handshakeRequest(port: int, headers: Optional[Dict[str, str]] = None, path: str = "/") -> bytes:
    """
    The bytes of a valid WebSocket opening handshake for 127.0.0.1:C{port},
    with extra C{headers}.
    """
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawPeer(protocol.Protocol):
    """
    A TCP client that writes what it is told and keeps every byte it gets:
    for handshakes and frames that a polite client would never send.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred = Deferred()
        self._waiting: List[Tuple[bytes, Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._waiting):
            if item[0] in self.received:
                self._waiting.remove(item)
                item[1].callback(self.received)

    def waitForBytes(self, text: bytes, timeout: float = 5) -> Deferred:
        """
        Fires with everything received once C{text} is among it.
        """
        d: Deferred = Deferred()
        if text in self.received:
            d.callback(self.received)
            return d
        self._waiting.append((text, d))
        d.addTimeout(timeout, reactor)
        return d

    def connectionLost(self, reason: Any = None) -> None:
        for text, d in self._waiting:
            if not d.called:
                d.errback(ConnectionError(f"closed before {text!r}: {self.received[:200]!r}"))
        self._waiting = []
        self.lost.callback(self.received)


def rawConnect(testCase: Any, port: int) -> Deferred:
    """
    Open a L{RawPeer} to 127.0.0.1:C{port}; it is aborted when the test ends.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    d = endpoint.connect(protocol.Factory.forProtocol(RawPeer))

    def connected(peer: RawPeer) -> RawPeer:
        def cleanup() -> Deferred:
            if not peer.lost.called:
                peer.transport.abortConnection()
            return peer.lost

        testCase.addCleanup(cleanup)
        return peer

    return d.addCallback(connected)


def makeCertificate(folder: str) -> Tuple[str, str, bytes]:
    """
    A self-signed certificate for C{localhost} and C{127.0.0.1}, valid for
    a day, written to C{folder}.

    @return: the key path, the certificate path and the certificate PEM.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(folder, exist_ok=True)
    keyPath = os.path.join(folder, "key.pem")
    certPath = os.path.join(folder, "cert.pem")
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(keyPath, 0o600)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(certPath, "wb") as f:
        f.write(pem)
    return keyPath, certPath, pem


class TCPLikeTransport(StringTransport):
    """
    A L{StringTransport} that behaves as a TCP transport does where
    wsglue relies on it: it names the protocol it delivers to (which a
    handover replaces), and unregistering a producer when none is
    registered is harmless.
    """

    protocol: Any = None

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def onceInCI() -> None:
    """
    Skip a test when C{ONCE_TESTS=0}: CI (tests/run.sh) runs the
    suite three times (newest set with and without the levers, floor set)
    and sets it for the second and third runs.  For slow tests whose
    subject is neither the levers nor the dependency versions: the
    benchmarks' smoke runs (they test the benchmark tools, whose servers
    each benchmark starts itself, with and without the levers where it
    compares them) and the cluster presence tests that wait out a dead
    worker's heartbeat (Redis and Lua bookkeeping).  Running them three
    times would only cost minutes.
    """
    from twisted.trial.unittest import SkipTest

    if os.environ.get("ONCE_TESTS") == "0":
        raise SkipTest("run once per CI run, in its first trial run (ONCE_TESTS=0)")


@inlineCallbacks
def runBenchSmoke(testCase: Any, module: str) -> Any:
    """
    Run C{python -m MODULE --smoke} (a benchmark's tiny run) from the
    repository in a child process, writing its JSON into a fresh folder; it
    is stopped with SIGTERM (then SIGKILL after 20 s) if the test ends
    first, and a benchmark stops what it started on SIGTERM.

    @return: a Deferred firing with C{(status, output, files, result)}: its
        exit status, its output as text, the files it wrote and the JSON
        of the one file (C{{}} unless there is exactly one).
    """
    output = os.path.abspath(testCase.mktemp())
    os.makedirs(output)
    collect = CollectOutput()
    transport = reactor.spawnProcess(
        collect,
        sys.executable,
        [sys.executable, "-m", module, "--smoke", "--output", output],
        env=dict(os.environ),
        path=ROOT,
    )

    def stop() -> Deferred:
        if not collect.ended.called:
            transport.signalProcess("TERM")
            killer = reactor.callLater(20, lambda: collect.ended.called or transport.signalProcess("KILL"))
            collect.ended.addBoth(lambda r: killer.active() and killer.cancel())
        return collect.ended

    testCase.addCleanup(stop)
    status = yield collect.ended
    files = os.listdir(output)
    result: Dict[str, Any] = {}
    if len(files) == 1:
        with open(os.path.join(output, files[0])) as f:
            result = json.load(f)
    return status, collect.output.decode("utf-8", "replace"), files, result
