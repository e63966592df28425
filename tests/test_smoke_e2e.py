"""
Smoke: the service answers ping over a real loopback socket.
"""
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.common import connect, serve, spawnDaemon, freePort


class SmokeTests(TestCase):
    @inlineCallbacks
    def test_pingPong(self):
        """
        ping is answered pong.
        """
        running = serve(self)
        client = yield connect(self, running.port)
        self.assertIn("CookieName=", client.setCookie)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_daemonSigterm(self):
        """
        SIGTERM closes clients with 1001 and exits 0.
        """
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"])
        yield daemon.waitForOutput("started websocket server at")
        client = yield connect(self, port)
        daemon.signal("TERM")
        code, reason = yield client.closed
        self.assertEqual(code, 1001)
        self.assertEqual((yield daemon.ended), 0, daemon.output)
