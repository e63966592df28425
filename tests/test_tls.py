"""
Tests for TLS (C{--port ssl:…}) end to end, with a throwaway certificate:
C{wss://} from a Python client and from headless Chromium, the C{Secure}
cookie flag, and what C{--trust-proxy} takes from a reverse proxy.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.common import CollectOutput, connect, makeCertificate, rawConnect, serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
]


# Run in a child process: open the page over https in headless Chromium,
# connect, send ping, print what #output shows.
BROWSER_SCRIPT = r"""
import sys
from playwright.sync_api import sync_playwright
url, chromium, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=flags, headless=True)
    try:
        page = browser.new_page(ignore_https_errors=True)
        page.set_default_timeout(15000)
        page.goto(url)
        page.click("#connect")
        page.wait_for_function("document.querySelector('#output').value.includes('Connected!')")
        page.click("#sendMessage")
        page.wait_for_function("document.querySelector('#output').value.includes('<== pong')")
        print("OUTPUT:" + page.eval_on_selector("#output", "e => e.value").replace("\n", "|"))
    finally:
        browser.close()
"""


class TLSTests(TestCase):
    """
    C{--port ssl:…} end to end.
    """

    def setUp(self) -> None:
        self.keyPath, self.certPath, self.pem = makeCertificate(self.mktemp())
        self.running = serve(
            self,
            "--port",
            f"ssl:0:interface=127.0.0.1:privateKey={self.keyPath}:certKey={self.certPath}",
        )

    @inlineCallbacks
    def test_plainHttpToTlsPortQuiet(self) -> None:
        """
        Plain HTTP requests to the TLS port (a scanner, a wrong URL) are
        dropped without an error line each: at most one rate-limited
        warning, the drops counted, and a real client still served.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        n = 30
        for _ in range(n):
            peer = yield rawConnect(self, self.running.port)
            peer.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            yield peer.lost
        errors = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(errors, [], [formatEvent(e) for e in errors])
        tls = [e for e in events if "TLS error" in (e.get("log_format") or "")]
        self.assertLessEqual(len(tls), 1)
        if self.running.service.levers.on:
            # The connection starts as the WebSocket protocol, which sees
            # the TLS error (without the lever, twisted.web's channel does).
            self.assertEqual(self.running.factory.counters["dropped_tls_error"], n)
        client = yield connect(self, self.running.port, trust=self.pem, hostname="localhost")
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_wssPongAndSecureCookie(self) -> None:
        """
        A C{wss://} client that checks the certificate gets C{pong}, and its
        new session cookie carries C{Secure}.
        """
        client = yield connect(self, self.running.port, trust=self.pem, hostname="localhost")
        self.assertIn("; Secure", client.setCookie)
        client.send("ping")
        self.assertEqual((yield client.nextMessage()), "pong")

    @inlineCallbacks
    def test_chromiumPageOverHttps(self) -> None:
        """
        Headless Chromium opens the page over https, the page connects with
        C{wss://} and shows C{pong} for its C{ping}.
        """
        if not os.path.exists(CHROMIUM):
            raise self.skipTest(f"{CHROMIUM} is not installed")
        collect = CollectOutput()
        url = f"https://127.0.0.1:{self.running.port}/"
        process = reactor.spawnProcess(
            collect,
            sys.executable,
            [sys.executable, "-c", BROWSER_SCRIPT, url, CHROMIUM, *CHROMIUM_FLAGS],
            env=dict(os.environ),
        )

        def kill() -> Deferred:
            if not collect.ended.called:
                process.signalProcess("KILL")
            return collect.ended

        self.addCleanup(kill)
        killer = reactor.callLater(60, kill)
        status = yield collect.ended
        if killer.active():
            killer.cancel()
        output = collect.output.decode("utf-8", "replace")
        self.assertEqual(status, 0, output)
        shown = output.split("OUTPUT:", 1)[1].strip().split("|")
        self.assertIn(f"Connecting to: wss://127.0.0.1:{self.running.port}/", shown)
        self.assertIn("Connected!", shown)
        self.assertIn("<== pong", shown)


class TrustProxyTests(TestCase):
    """
    C{X-Forwarded-Proto} makes the cookie C{Secure} only with
    C{--trust-proxy}.
    """

    @inlineCallbacks
    def test_forwardedProtoTrusted(self) -> None:
        """
        With C{--trust-proxy}, C{X-Forwarded-Proto: https} on a plain
        connection makes the new cookie C{Secure}.
        """
        running = serve(self, "--trust-proxy", "--allowed-origin", "*")
        client = yield connect(self, running.port, headers={"X-Forwarded-Proto": "https"})
        self.assertIn("; Secure", client.setCookie)

    @inlineCallbacks
    def test_forwardedProtoIgnored(self) -> None:
        """
        Without C{--trust-proxy}, C{X-Forwarded-Proto: https} changes
        nothing: the cookie of a plain connection is not C{Secure}.
        """
        running = serve(self, "--allowed-origin", "*")
        client = yield connect(self, running.port, headers={"X-Forwarded-Proto": "https"})
        self.assertNotIn("Secure", client.setCookie)

    @inlineCallbacks
    def test_plainConnectionNotSecure(self) -> None:
        """
        With C{--trust-proxy} but no C{X-Forwarded-Proto}, a plain
        connection's cookie is not C{Secure}.
        """
        running = serve(self, "--trust-proxy")
        client = yield connect(self, running.port)
        self.assertNotIn("Secure", client.setCookie)


class SlowConsumerOverTLSTests(TestCase):
    """
    The send-buffer limit sees what waits below the TLS layer too.
    """

    @inlineCallbacks
    def test_slowTLSClientCutOff(self) -> None:
        """
        A C{wss://} client that stops reading while broadcasts flood is
        closed with 1008, and the server never holds more than the limit
        plus one message for it.
        """
        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.internet.task import deferLater

        from tests.common import RawPeer, handshakeRequest, waitFor
        from wsglue.levers.fastwrite import bufferedBytes
        from wsglue.registry import prepare

        keyPath, certPath, pem = makeCertificate(self.mktemp())
        limit, size = 131072, 32768
        running = serve(
            self,
            "--port",
            f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}",
            "--max-send-buffer",
            str(limit),
        )
        context = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pem))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", running.port, context, timeout=5)
        peer = yield endpoint.connect(protocol.Factory.forProtocol(RawPeer))
        self.addCleanup(lambda: peer.lost.called or peer.transport.abortConnection())
        peer.transport.write(handshakeRequest(running.port))
        yield peer.waitForBytes(b"\r\n\r\n")
        peer.transport.transport.pauseProducing()
        yield waitFor(lambda: len(running.registry) == 1)
        conn = running.registry.connections(running.registry.sessions()[0])[0]

        peak = 0
        for _ in range(2000):
            if running.factory.limits.counters["closed_send_buffer"]:
                break
            peak = max(peak, bufferedBytes(conn.transport))
            running.registry.broadcast("x" * size)
            yield deferLater(reactor, 0.002, lambda: None)
        self.assertEqual(conn.localCloseCode, 1008)
        self.assertLessEqual(peak, limit + len(prepare("x" * size).payloadHybi) + 1024)
        self.assertGreater(peak, limit // 2)
        yield waitFor(lambda: len(running.registry) == 0, timeout=10)
