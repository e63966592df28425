"""
End-to-end tests: a wsglue service on a real loopback port (in this process,
or a real C{twistd} child process) and real WebSocket clients.
"""

from __future__ import annotations

import os
import signal
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.common import (
    ROOT,
    connect,
    cookieValue,
    freePort,
    handshakeRequest,
    makeCertificate,
    rawConnect,
    serve,
    spawnDaemon,
    suiteReactor,
    waitFor,
)
from tests.handlers_for_tests import HandlerError
from tests.ports import accepts

RECORDER = "tests.handlers_for_tests:Recorder"


@inlineCallbacks
def tabs(testCase: TestCase, port: int, n: int = 2) -> Any:
    """
    C{n} connections of one session: the first gets a cookie, the others
    send it.  Fires with (sid, [clients]).
    """
    first = yield connect(testCase, port)
    sid = cookieValue(first.setCookie)
    clients = [first]
    for _ in range(n - 1):
        clients.append((yield connect(testCase, port, {"Cookie": f"CookieName={sid}"})))
    return sid, clients


class SessionTests(TestCase):
    """
    Cookies, sessions and the default handler.
    """

    def setUp(self) -> None:
        self.running = serve(self)

    @inlineCallbacks
    def test_cookieIssuedThenReused(self) -> None:
        """
        The first connection gets a C{Set-Cookie}; a second one that sends it
        gets none and lands in the same session.
        """
        first = yield connect(self, self.running.port)
        self.assertIn("HttpOnly", first.setCookie)
        sid = cookieValue(first.setCookie)
        second = yield connect(self, self.running.port, {"Cookie": f"CookieName={sid}"})
        self.assertIsNone(second.setCookie)
        yield waitFor(lambda: len(self.running.registry.connections(sid)) == 2)
        self.assertEqual(self.running.registry.sessions(), [sid])

    @inlineCallbacks
    def test_malformedCookieReplaced(self) -> None:
        """
        A malformed cookie gets a new session id in C{Set-Cookie}.
        """
        client = yield connect(self, self.running.port, {"Cookie": "CookieName=nothex"})
        self.assertRegex(cookieValue(client.setCookie), r"\A[0-9a-f]{40}\Z")

    @inlineCallbacks
    def test_pingPong(self) -> None:
        """
        C{ping} is answered C{pong}.
        """
        client = yield connect(self, self.running.port)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_textOk(self) -> None:
        """
        Other text is answered C{ok}.
        """
        client = yield connect(self, self.running.port)
        client.send("hello")
        self.assertEqual((yield client.nextMessage()), "ok")

    @inlineCallbacks
    def test_binaryClosed1003(self) -> None:
        """
        A binary message closes the connection with 1003.
        """
        client = yield connect(self, self.running.port)
        client.send(b"ping")
        code, reason = yield client.closed
        self.assertEqual(code, 1003)
        yield waitFor(lambda: self.running.registry.connectionCount == 0)

    @inlineCallbacks
    def test_answerOnlyToAsker(self) -> None:
        """
        The answer reaches only the connection that asked, not the other
        tab of the same session nor another session.
        """
        sid, (asker, tab) = yield tabs(self, self.running.port)
        other = yield connect(self, self.running.port)
        asker.send("ping")
        self.assertEqual((yield asker.nextMessage()), "pong")
        # Had the pong reached them, it would arrive before these answers.
        tab.send("x")
        other.send("y")
        self.assertEqual((yield tab.nextMessage()), "ok")
        self.assertEqual((yield other.nextMessage()), "ok")

    @inlineCallbacks
    def test_broadcastTwoTabsThenOne(self) -> None:
        """
        A broadcast reaches both connections of a session; after one closes
        it still reaches the other.
        """
        sid, (one, two) = yield tabs(self, self.running.port)
        yield waitFor(lambda: self.running.registry.connectionCount == 2)
        self.assertEqual(self.running.registry.broadcast("notify"), 2)
        self.assertEqual((yield one.nextMessage()), "notify")
        self.assertEqual((yield two.nextMessage()), "notify")
        one.sendClose(1000)
        yield one.closed
        yield waitFor(lambda: self.running.registry.connectionCount == 1)
        self.assertIn(sid, self.running.registry)
        self.assertEqual(self.running.registry.broadcast("again"), 1)
        self.assertEqual((yield two.nextMessage()), "again")

    @inlineCallbacks
    def test_sendReachesBothTabs(self) -> None:
        """
        C{registry.send(sid)} reaches both tabs of the session: text as text,
        bytes as binary.
        """
        sid, (one, two) = yield tabs(self, self.running.port)
        yield waitFor(lambda: self.running.registry.connectionCount == 2)
        self.assertEqual(self.running.registry.send(sid, "hi"), 2)
        self.assertEqual(self.running.registry.send(sid, b"\x00\x01"), 2)
        for client in (one, two):
            self.assertEqual((yield client.nextMessage()), "hi")
            self.assertEqual((yield client.nextMessage()), b"\x00\x01")

    @inlineCallbacks
    def test_registryClose(self) -> None:
        """
        C{registry.close(sid, code)} closes every tab of the session with
        that code, and the session is gone.
        """
        sid, (one, two) = yield tabs(self, self.running.port)
        yield waitFor(lambda: self.running.registry.connectionCount == 2)
        self.assertEqual(self.running.registry.close(sid, 4001, "bye"), 2)
        self.assertEqual((yield one.closed), (4001, "bye"))
        self.assertEqual((yield two.closed), (4001, "bye"))
        yield waitFor(lambda: sid not in self.running.registry)

    @inlineCallbacks
    def test_closedSessionGone(self) -> None:
        """
        When the last connection of a session closes, the session is gone.
        """
        client = yield connect(self, self.running.port)
        sid = cookieValue(client.setCookie)
        yield waitFor(lambda: sid in self.running.registry)
        client.sendClose(1000)
        code, reason = yield client.closed
        self.assertEqual(code, 1000)
        yield waitFor(lambda: sid not in self.running.registry)
        self.assertEqual(self.running.registry.send(sid, "x"), 0)


class ProtocolErrorTests(TestCase):
    """
    Protocol failures are answered with a close frame carrying the code.
    """

    @inlineCallbacks
    def test_oversized1009(self) -> None:
        """
        A message over C{--max-message-size} closes the connection with 1009.
        """
        running = serve(self, "--max-message-size", "100")
        client = yield connect(self, running.port)
        client.send("x" * 100)
        self.assertEqual((yield client.nextMessage()), "ok")
        client.send("x" * 101)
        code, reason = yield client.closed
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_invalidUtf8Closed1007(self) -> None:
        """
        A text message that is not UTF-8 closes the connection with 1007.
        """
        running = serve(self)
        client = yield connect(self, running.port)
        client.sendMessage(b"\xff\xfe", isBinary=False)
        code, reason = yield client.closed
        self.assertEqual(code, 1007)


class OriginTests(TestCase):
    """
    The Origin check, over real sockets.
    """

    @inlineCallbacks
    def handshake(self, port: int, headers: dict) -> Any:
        peer = yield rawConnect(self, port)
        peer.transport.write(handshakeRequest(port, headers))
        received = yield peer.waitForBytes(b"\r\n\r\n")
        return received.split(b"\r\n", 1)[0]

    @inlineCallbacks
    def test_foreignOriginRefused(self) -> None:
        """
        A foreign C{Origin} gets 403 and no session.
        """
        running = serve(self)
        status = yield self.handshake(running.port, {"Origin": "http://evil.example"})
        self.assertIn(b" 403 ", status)
        self.assertEqual(len(running.registry), 0)

    @inlineCallbacks
    def test_foreignOriginRefusedForRealClient(self) -> None:
        """
        A real client sending a foreign C{Origin} fails its handshake.
        """
        running = serve(self)
        d = connect(self, running.port, {"Origin": "http://evil.example"})
        yield self.assertFailure(d, ConnectionError)

    @inlineCallbacks
    def test_sameOriginAccepted(self) -> None:
        """
        The page's own origin is accepted.
        """
        running = serve(self)
        client = yield connect(self, running.port, {"Origin": f"http://127.0.0.1:{running.port}"})
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_nullOriginRefused(self) -> None:
        """
        C{Origin: null} (a sandboxed frame, a file: page) is refused with
        403 by the same-origin default, like any foreign origin.
        """
        running = serve(self)
        status = yield self.handshake(running.port, {"Origin": "null"})
        self.assertIn(b" 403 ", status)
        self.assertEqual(len(running.registry), 0)

    @inlineCallbacks
    def test_noOriginAccepted(self) -> None:
        """
        A client that sends no C{Origin} is accepted.
        """
        running = serve(self)
        status = yield self.handshake(running.port, {})
        self.assertIn(b" 101 ", status)

    @inlineCallbacks
    def test_allowedOriginPattern(self) -> None:
        """
        With C{--allowed-origin}, a matching origin is accepted and the
        page's own origin (not matching) is refused.
        """
        running = serve(self, "--allowed-origin", "https://*.example.com")
        allowed = yield self.handshake(running.port, {"Origin": "https://app.example.com"})
        self.assertIn(b" 101 ", allowed)
        own = yield self.handshake(running.port, {"Origin": f"http://127.0.0.1:{running.port}"})
        self.assertIn(b" 403 ", own)


class HandlerTests(TestCase):
    """
    A custom C{--handler}, end to end.
    """

    def setUp(self) -> None:
        self.running = serve(self, "--handler", RECORDER)
        self.handler = self.running.factory.handler.handler

    @inlineCallbacks
    def test_opened(self) -> None:
        """
        C{opened(sid, conn)} is called with the session of the connection.
        """
        client = yield connect(self, self.running.port)
        sid = cookieValue(client.setCookie)
        yield waitFor(lambda: self.handler.events)
        self.assertEqual(self.handler.events[0][:2], ("opened", sid))

    @inlineCallbacks
    def test_receivedResultSent(self) -> None:
        """
        What C{received} returns goes back on the connection: text as text,
        bytes as binary.
        """
        client = yield connect(self, self.running.port)
        client.send("echo hi")
        self.assertEqual((yield client.nextMessage()), "echo: hi")
        client.send(b"\x01\x02")
        self.assertEqual((yield client.nextMessage()), b"\x02\x01")

    @inlineCallbacks
    def test_deferredResultSent(self) -> None:
        """
        A Deferred returned by C{received} has its result sent when it fires.
        """
        client = yield connect(self, self.running.port)
        client.send("later x")
        self.assertEqual((yield client.nextMessage()), "later: x")

    @inlineCallbacks
    def test_closed(self) -> None:
        """
        C{closed(sid, conn)} is called when the connection closes.
        """
        client = yield connect(self, self.running.port)
        sid = cookieValue(client.setCookie)
        client.sendClose(1000)
        yield client.closed
        yield waitFor(lambda: any(e[0] == "closed" for e in self.handler.events))
        self.assertEqual(self.handler.events[-1][:2], ("closed", sid))

    @inlineCallbacks
    def test_connClose(self) -> None:
        """
        C{conn.close(code, reason)} in a handler closes that connection with
        that code.
        """
        client = yield connect(self, self.running.port)
        client.send("close")
        self.assertEqual((yield client.closed), (4000, "asked to close"))

    @inlineCallbacks
    def test_sendToSession(self) -> None:
        """
        A handler reaches every tab of its session through the registry.
        """
        sid, (one, two) = yield tabs(self, self.running.port)
        yield waitFor(lambda: self.running.registry.connectionCount == 2)
        one.send("session both")
        self.assertEqual((yield one.nextMessage()), "both")
        self.assertEqual((yield two.nextMessage()), "both")

    @inlineCallbacks
    def test_exceptionContained(self) -> None:
        """
        An exception in C{received} is logged and closes nothing: the same
        connection and the others keep working.
        """
        client = yield connect(self, self.running.port)
        other = yield connect(self, self.running.port)
        client.send("boom")
        client.send("echo still")
        self.assertEqual((yield client.nextMessage()), "echo: still")
        other.send("echo too")
        self.assertEqual((yield other.nextMessage()), "echo: too")
        self.assertEqual(len(self.flushLoggedErrors(HandlerError)), 1)
        self.assertEqual(self.running.registry.connectionCount, 2)


class BrokenHandlerTests(TestCase):
    """
    Exceptions in C{opened}/C{closed} are contained too.
    """

    @inlineCallbacks
    def test_openedRaises(self) -> None:
        """
        A handler whose C{opened} raises still gets its messages.
        """
        running = serve(self, "--handler", "tests.handlers_for_tests:BrokenOpened")
        client = yield connect(self, running.port)
        client.send("echo ok")
        self.assertEqual((yield client.nextMessage()), "echo: ok")
        self.assertEqual(len(self.flushLoggedErrors(HandlerError)), 1)

    @inlineCallbacks
    def test_closedRaises(self) -> None:
        """
        A handler whose C{closed} raises does not keep the closed connection
        registered, and the others keep working.
        """
        running = serve(self, "--handler", "tests.handlers_for_tests:BrokenClosed")
        client = yield connect(self, running.port)
        other = yield connect(self, running.port)
        client.sendClose(1000)
        yield client.closed
        yield waitFor(lambda: running.registry.connectionCount == 1)
        other.send("echo alive")
        self.assertEqual((yield other.nextMessage()), "echo: alive")
        self.assertEqual(len(self.flushLoggedErrors(HandlerError)), 1)
        other.sendClose(1000)
        yield other.closed
        yield waitFor(lambda: running.registry.connectionCount == 0)
        self.assertEqual(len(self.flushLoggedErrors(HandlerError)), 1)


class BroadcastTests(TestCase):
    """
    The demo broadcast.
    """

    @inlineCallbacks
    def test_demoBroadcast(self) -> None:
        """
        With a short C{--broadcast-interval}, clients receive C{notify}.
        """
        running = serve(self, "--broadcast-interval", "0.05")
        client = yield connect(self, running.port)
        self.assertEqual((yield client.nextMessage()), "notify")
        self.assertEqual((yield client.nextMessage()), "notify")

    @inlineCallbacks
    def test_broadcastMessage(self) -> None:
        """
        C{--broadcast-message} is what the demo broadcast sends.
        """
        running = serve(self, "--broadcast-interval", "0.05", "--broadcast-message", "tick")
        client = yield connect(self, running.port)
        self.assertEqual((yield client.nextMessage()), "tick")


class LogTests(TestCase):
    """
    What the service logs: short session ids only, per-message lines only
    with C{--verbose}.
    """

    def setUp(self) -> None:
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> List[str]:
        return [formatEvent(e) for e in self.events]

    def assertNoFullId(self, sid: str) -> None:
        for event in self.events:
            self.assertNotIn(sid, formatEvent(event))
            for key, value in event.items():
                self.assertNotIn(sid, repr(value), key)

    @inlineCallbacks
    def session(self, *argv: str) -> Any:
        running = serve(self, *argv)
        client = yield connect(self, running.port)
        sid = cookieValue(client.setCookie)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        client.sendClose(1000)
        yield client.closed
        yield waitFor(lambda: f"session closed: {sid[:8]}" in self.lines())
        return sid

    @inlineCallbacks
    def test_openedAndClosed(self) -> None:
        """
        C{session opened: <8 chars>} and C{session closed: <8 chars>} are
        logged.
        """
        sid = yield self.session()
        lines = self.lines()
        self.assertIn(f"session opened: {sid[:8]}", lines)
        self.assertIn(f"session closed: {sid[:8]}", lines)

    def test_startedLine(self) -> None:
        """
        Start-up says where it listens.
        """
        running = serve(self)
        self.assertIn(f"started websocket server at ws://127.0.0.1:{running.port}", self.lines())

    @inlineCallbacks
    def test_fullIdNeverLogged(self) -> None:
        """
        The full session id appears in no log event, verbose or not.
        """
        sid = yield self.session("--verbose")
        self.assertNoFullId(sid)
        other = yield self.session()
        self.assertNoFullId(other)

    @inlineCallbacks
    def test_quietByDefault(self) -> None:
        """
        Without C{--verbose} no message is logged.
        """
        yield self.session()
        self.assertEqual([l for l in self.lines() if "<==" in l or "==>" in l], [])

    @inlineCallbacks
    def test_verbose(self) -> None:
        """
        With C{--verbose} each message is logged: C{<== ping from <8 chars>}
        and C{==> pong}.
        """
        sid = yield self.session("--verbose")
        lines = self.lines()
        self.assertIn(f"<== ping from {sid[:8]}", lines)
        self.assertIn("==> pong", lines)

    @inlineCallbacks
    def test_verboseRegistry(self) -> None:
        """
        With C{--verbose} what server code sends through the registry is
        logged too: one line per C{send} and one per C{broadcast}, however
        many connections they reach, with the short session id only.
        """
        running = serve(self, "--verbose")
        client = yield connect(self, running.port)
        sid = cookieValue(client.setCookie)
        yield waitFor(lambda: sid in running.registry)
        self.assertEqual(running.registry.send(sid, "to you"), 1)
        self.assertEqual(running.registry.broadcast("to all"), 1)
        self.assertEqual((yield client.nextMessage()), "to you")
        self.assertEqual((yield client.nextMessage()), "to all")
        lines = self.lines()
        self.assertIn(f"==> to you to {sid[:8]} (1 connections)", lines)
        self.assertIn("==> to all (broadcast to 1 connections)", lines)
        self.assertNoFullId(sid)


class _Refuser(Protocol):
    pass


class DaemonTests(TestCase):
    """
    The real C{twistd} daemon in a child process.
    """

    @inlineCallbacks
    def test_sigtermClosesWith1001(self) -> None:
        """
        SIGTERM closes every client with 1001 and the daemon exits 0; its
        C{--verbose} output logs messages but never a full session id.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1", "--verbose"])
        yield daemon.waitForOutput(f"started websocket server at ws://127.0.0.1:{port}")
        sid, clients = yield tabs(self, port, 2)
        third = yield connect(self, port)
        clients.append(third)
        for client in clients:
            client.send("ping")
            self.assertEqual((yield client.nextMessage()), "pong")
        daemon.signal("TERM")
        for client in clients:
            code, reason = yield client.closed
            self.assertEqual(code, 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)
        self.assertIn(f"session opened: {sid[:8]}", daemon.output)
        self.assertIn(f"<== ping from {sid[:8]}", daemon.output)
        self.assertIn("==> pong", daemon.output)
        self.assertNotIn(sid, daemon.output)
        self.assertNotIn(cookieValue(third.setCookie), daemon.output)
        self.assertNotIn("Traceback", daemon.output)
        # No reactor chosen: wsglue's own.
        self.assertIn(f"reactor class: {suiteReactor()}.", daemon.output)

    @inlineCallbacks
    def test_chosenReactorKept(self) -> None:
        """
        C{twistd -r epoll wsglue} runs on Twisted's own epoll reactor.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"], twistdArgs=["-r", "epoll"])
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        daemon.signal("TERM")
        self.assertEqual((yield daemon.ended), 0, daemon.output)
        self.assertIn("reactor class: twisted.internet.epollreactor.EPollReactor.", daemon.output)

    @inlineCallbacks
    def test_sigintExits0(self) -> None:
        """
        SIGINT is a graceful stop too: 1001 and exit status 0.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        daemon.signal("INT")
        code, reason = yield client.closed
        self.assertEqual(code, 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)

    @inlineCallbacks
    def test_sighupIgnored(self) -> None:
        """
        SIGHUP neither stops nor kills the daemon: it is logged and ignored,
        the open WebSocket and new ones are served, and SIGTERM then stops
        it as usual (1001, exit status 0).
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        daemon.signal("HUP")
        yield daemon.waitForOutput("received SIGHUP, ignored")
        self.assertFalse(daemon.ended.called, daemon.output)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        another = yield connect(self, port)
        another.send("ping")
        self.assertEqual((yield another.nextMessage()), "pong")
        daemon.signal("TERM")
        self.assertEqual((yield client.closed)[0], 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)

    @inlineCallbacks
    def test_sigtermAsSoonAsThePortAccepts(self) -> None:
        """
        A SIGTERM sent the moment the port first accepts a connection, as
        twistd is still starting, is the normal stop: exit status 0, not
        death by the signal.  Tried several times, to hit the moment.
        """
        for attempt in range(4):
            port = freePort()
            daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
            yield waitFor(lambda: accepts(port) or daemon.ended.called, timeout=30, interval=0.002)
            daemon.signal("TERM")
            status = yield daemon.ended
            self.assertEqual(status, 0, f"attempt {attempt}:\n{daemon.output}")
            self.assertNotIn("Traceback", daemon.output)

    @inlineCallbacks
    def test_portInUse(self) -> None:
        """
        A port that is already in use ends the daemon at once with one line
        naming the port and a non-zero exit status, no traceback.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(_Refuser), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
        status = yield daemon.ended
        self.assertNotEqual(status, 0)
        self.assertNotIn("Traceback", daemon.output)
        lines = [l for l in daemon.output.splitlines() if str(port) in l]
        self.assertEqual(len(lines), 1, daemon.output)
        self.assertIn("cannot listen", lines[0])

    @inlineCallbacks
    def test_silentClientClosedOnStop(self) -> None:
        """
        A client that never answers the 1001 close frame is cut off when
        the drain time is up, and its session still closes as any other:
        the C{session closed} line is logged before a clean exit.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
        yield daemon.waitForOutput("started websocket server at")
        peer = yield rawConnect(self, port)
        peer.transport.write(handshakeRequest(port))
        response = yield peer.waitForBytes(b"\r\n\r\n")
        [setCookie] = [
            line.split(b":", 1)[1].strip().decode()
            for line in response.split(b"\r\n")
            if line.lower().startswith(b"set-cookie:")
        ]
        sid = cookieValue(setCookie)
        yield daemon.waitForOutput(f"session opened: {sid[:8]}")
        daemon.signal("TERM")
        # The 1001 close frame arrives; the peer never answers it.
        yield peer.waitForBytes(b"\x88", timeout=10)
        self.assertEqual((yield daemon.ended), 0, daemon.output)
        self.assertIn(f"session closed: {sid[:8]}", daemon.output)
        self.assertNotIn("Traceback", daemon.output)

    @inlineCallbacks
    def test_portInUseDaemonized(self) -> None:
        """
        Run as a daemon (no C{-n}), C{twistd} still ends at once with a
        non-zero status, rather than wait for ever for a daemon that has
        exited, and says in one clear line that it cannot listen on the
        port and why: not twistd's C{An error has occurred: b"..."}, a
        bytes repr cut at 100 bytes.  The port is bound before twistd
        daemonizes, so no pid file is left behind.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(_Refuser), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        pidfile = os.path.join(folder, "twistd.pid")
        logfile = os.path.join(folder, "twistd.log")
        daemon = spawnDaemon(
            self,
            ["--port", f"tcp:{port}:interface=127.0.0.1"],
            twistdArgs=["--pidfile", pidfile, "--logfile", logfile],
            nodaemon=False,
        )
        # (A Deferred of its own: a timeout on daemon.ended would leave
        # the hung process running past the test.)
        ended: Deferred = Deferred()
        daemon.ended.addBoth(lambda status: ended.called or ended.callback(status))
        status = yield ended.addTimeout(30, reactor)
        self.assertNotEqual(status, 0)
        lines = daemon.output.strip().splitlines()
        self.assertEqual(len(lines), 1, daemon.output)
        self.assertTrue(
            lines[0].startswith(
                f"wsglue: cannot listen on tcp:{port}:interface=127.0.0.1: Couldn't listen on 127.0.0.1:{port}: "
            ),
            lines[0],
        )
        self.assertIn("Address already in use", lines[0])
        self.assertNotIn("An error has occurred", daemon.output)
        # Should a daemonized child have started, it removes its pid file
        # after its parent exited: wait for it to go, within a bound.
        yield waitFor(lambda: not os.path.exists(pidfile), timeout=10)

    @inlineCallbacks
    def test_daemonized(self) -> None:
        """
        Run as a daemon (no C{-n}), wsglue serves; SIGHUP leaves it running
        (it killed the daemon and left its pid file behind); SIGTERM stops
        it with 1001 and it removes its pid file.
        """
        port = freePort()
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        pidfile = os.path.join(folder, "twistd.pid")
        logfile = os.path.join(folder, "twistd.log")
        starter = spawnDaemon(
            self,
            ["--port", f"tcp:{port}:interface=127.0.0.1"],
            twistdArgs=["--pidfile", pidfile, "--logfile", logfile],
            nodaemon=False,
        )
        self.assertEqual((yield starter.ended), 0, starter.output)
        yield waitFor(lambda: os.path.exists(pidfile), timeout=10)
        with open(pidfile) as f:
            pid = int(f.read().strip())

        def reap() -> None:
            # The daemon is our grandchild: stopped by its pid if it runs on.
            if os.path.exists(pidfile):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        self.addCleanup(reap)
        client = yield connect(self, port)
        os.kill(pid, signal.SIGHUP)
        yield waitFor(lambda: "received SIGHUP, ignored" in open(logfile).read(), timeout=10)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        os.kill(pid, signal.SIGTERM)
        self.assertEqual((yield client.closed)[0], 1001)
        yield waitFor(lambda: not os.path.exists(pidfile), timeout=10)
        with open(logfile) as f:
            log = f.read()
        self.assertIn("closing 1 connection (1001)", log)
        self.assertNotIn("Traceback", log)

    @inlineCallbacks
    def test_badOptionOneLine(self) -> None:
        """
        A bad option value ends C{twistd wsglue} with one line saying what is
        wrong and a non-zero exit status, no traceback and no help text.
        """
        daemon = spawnDaemon(self, ["--broadcast-interval", "-1"])
        status = yield daemon.ended
        self.assertNotEqual(status, 0)
        self.assertEqual(
            daemon.output.strip().splitlines(),
            ["wsglue: error: --broadcast-interval must be a number of seconds, 0 or more, not '-1'"],
        )

    @inlineCallbacks
    def test_outOfRangeOneLineExit2(self) -> None:
        """
        C{--workers 1000} and C{--port tcp:99999} are refused while parsing
        the options: one line each and exit status 2, nothing started.
        """
        for args, line in [
            (
                ["--workers", "1000", "--redis", "redis://127.0.0.1:1/0"],
                "wsglue: error: --workers must be a whole number from 1 to 64, not '1000'",
            ),
            (
                ["--port", "tcp:99999"],
                "wsglue: error: --port 'tcp:99999' is not a valid endpoint:"
                " the port number must be from 0 to 65535, not 99999",
            ),
        ]:
            daemon = spawnDaemon(self, args)
            self.assertEqual((yield daemon.ended), 2, daemon.output)
            self.assertEqual(daemon.output.strip().splitlines(), [line])

    @inlineCallbacks
    def test_missingStaticOneLine(self) -> None:
        """
        A missing static folder ends the daemon with one line naming it.
        """
        missing = os.path.abspath(self.mktemp())
        daemon = spawnDaemon(self, ["--static", missing])
        status = yield daemon.ended
        self.assertNotEqual(status, 0)
        lines = daemon.output.strip().splitlines()
        self.assertEqual(len(lines), 1, daemon.output)
        self.assertIn(missing, lines[0])

    @inlineCallbacks
    def test_glueTac(self) -> None:
        """
        C{twistd -ny glue.tac} with C{WSGLUE_PORT} and
        C{WSGLUE_BROADCAST_INTERVAL} serves the WebSocket and broadcasts.
        """
        port = freePort()
        daemon = spawnDaemon(
            self,
            [],
            tac=os.path.join(ROOT, "glue.tac"),
            env={
                "WSGLUE_PORT": f"tcp:{port}:interface=127.0.0.1",
                "WSGLUE_BROADCAST_INTERVAL": "0.1",
            },
        )
        yield daemon.waitForOutput(f"started websocket server at ws://127.0.0.1:{port}")
        client = yield connect(self, port)
        self.assertEqual((yield client.nextMessage()), "notify")
        client.send("ping")
        message = yield client.nextMessage()
        while message == "notify":
            message = yield client.nextMessage()
        self.assertEqual(message, "pong")
        daemon.signal("TERM")
        self.assertEqual((yield client.closed)[0], 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)
        self.assertIn(f"reactor class: {suiteReactor()}.", daemon.output)

    @inlineCallbacks
    def test_glueTacBadEnvironment(self) -> None:
        """
        A bad C{WSGLUE_*} value ends C{glue.tac} with one line and a non-zero
        exit status.
        """
        daemon = spawnDaemon(self, [], tac=os.path.join(ROOT, "glue.tac"), env={"WSGLUE_VERBOSE": "maybe"})
        status = yield daemon.ended
        self.assertNotEqual(status, 0)
        self.assertIn("WSGLUE_VERBOSE", daemon.output)
        self.assertNotIn("Traceback", daemon.output)

    @inlineCallbacks
    def test_glueTacBadNumberNamesTheVariable(self) -> None:
        """
        A bad number in a C{WSGLUE_*} variable is reported by the name of
        the variable the user set, in one line, with exit status 2.
        """
        daemon = spawnDaemon(self, [], tac=os.path.join(ROOT, "glue.tac"), env={"WSGLUE_BROADCAST_INTERVAL": "abc"})
        self.assertEqual((yield daemon.ended), 2, daemon.output)
        self.assertEqual(
            daemon.output.strip().splitlines(),
            ["wsglue: error: WSGLUE_BROADCAST_INTERVAL must be a number of seconds, 0 or more, not 'abc'"],
        )


class TLSTests(TestCase):
    """
    C{--port ssl:...}: the page and the WebSocket over TLS.
    """

    @inlineCallbacks
    def test_secureCookieOverTLS(self) -> None:
        """
        Over an C{ssl:} endpoint a real TLS client is served, the page's own
        C{https} origin is accepted, and the cookie is C{Secure}.
        """
        keyPath, certPath, certPem = makeCertificate(os.path.abspath(self.mktemp()))
        running = serve(self, "--port", f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}")
        client = yield connect(self, running.port, {"Origin": f"https://127.0.0.1:{running.port}"}, trust=certPem)
        self.assertTrue(client.setCookie.endswith("; HttpOnly; SameSite=Lax; Secure"))
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_plainOriginRefusedOverTLS(self) -> None:
        """
        Over TLS an C{http} origin is not the page's origin: refused.
        """
        keyPath, certPath, certPem = makeCertificate(os.path.abspath(self.mktemp()))
        running = serve(self, "--port", f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}")
        d = connect(self, running.port, {"Origin": f"http://127.0.0.1:{running.port}"}, trust=certPem)
        yield self.assertFailure(d, ConnectionError)


class PingTests(TestCase):
    """
    C{--ping-interval} and C{--ping-timeout}, through Autobahn's auto-ping.
    """

    @inlineCallbacks
    def test_silentPeerDropped(self) -> None:
        """
        A peer that never answers the server's ping is pinged and then
        dropped, and its session is gone.
        """
        # Whole seconds: on the plain path Autobahn's timer rounds to them.
        running = serve(self, "--ping-interval", "1", "--ping-timeout", "1")
        peer = yield rawConnect(self, running.port)
        peer.transport.write(handshakeRequest(running.port))
        yield peer.waitForBytes(b"\r\n\r\n")
        yield waitFor(lambda: running.registry.connectionCount == 1)
        received = yield peer.lost.addTimeout(8, reactor)
        frames = received.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(frames[:1], b"\x89")
        yield waitFor(lambda: running.registry.connectionCount == 0)

    @inlineCallbacks
    def test_answeringPeerKept(self) -> None:
        """
        A client that answers pings (as every browser does) stays connected
        past the ping timeout.
        """
        # Whole seconds: on the plain path Autobahn's timer rounds to them.
        running = serve(self, "--ping-interval", "1", "--ping-timeout", "1")
        client = yield connect(self, running.port)
        pings = []
        original = client.onPing
        client.onPing = lambda payload: (pings.append(payload), original(payload))
        yield waitFor(lambda: len(pings) >= 2, timeout=8)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")
        self.assertFalse(client.closed.called)


class ExampleTests(TestCase):
    """
    The shipped example handler, run as the README shows.
    """

    @inlineCallbacks
    def test_clockPushesTime(self) -> None:
        """
        C{--handler wsglue.examples.clock:Clock} greets a new connection with
        its short session id and then pushes the time on its own.
        """
        running = serve(self, "--handler", "wsglue.examples.clock:Clock")
        client = yield connect(self, running.port)
        sid = cookieValue(client.setCookie)
        self.assertEqual((yield client.nextMessage()), f"hello {sid[:8]}")
        pushed = yield client.nextMessage()
        self.assertRegex(pushed, r"\Atime \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
        client.send("time")
        answer = yield client.nextMessage()
        self.assertTrue(answer.startswith("time "), answer)
