"""
Tests for slow consumers: a client that stops reading while broadcasts
flood is cut off once its unsent data passes C{--max-send-buffer}, what the
server holds for it stays bounded, and a normal client on the same server
receives every broadcast.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from tests.common import connect, cookieValue, handshakeRequest, rawConnect, serve, waitFor
from wsglue.levers.fastwrite import bufferedBytes
from wsglue.registry import prepare

LIMIT = 262144
MESSAGE = 65536


class SlowConsumerTests(TestCase):
    """
    One client stops reading while another reads, during a broadcast flood.
    """

    @inlineCallbacks
    def test_slowClientCutOffOthersServed(self) -> None:
        """
        A client that completes the handshake and then stops reading is
        closed with 1008 once more than C{--max-send-buffer} bytes wait for
        it; the server never holds more than the limit plus one message for
        it; a normal client receives every broadcast, in order.
        """
        running = serve(self, "--max-send-buffer", str(LIMIT))
        normal = yield connect(self, running.port)
        normalSid = cookieValue(normal.setCookie)

        slow = yield rawConnect(self, running.port)
        slow.transport.write(handshakeRequest(running.port))
        yield slow.waitForBytes(b"\r\n\r\n")
        self.assertIn(b" 101 ", slow.received.split(b"\r\n", 1)[0])
        slow.transport.pauseProducing()
        yield waitFor(lambda: len(running.registry) == 2)
        slowSid = next(s for s in running.registry.sessions() if s != normalSid)
        slowConn = running.registry.connections(slowSid)[0]

        sent: List[str] = []
        peak = [0]
        done: Deferred = Deferred()
        limits = running.factory.limits

        def flood() -> None:
            if slowConn.state == slowConn.STATE_OPEN:
                peak[0] = max(peak[0], bufferedBytes(slowConn.transport))
            # Stop a few broadcasts after the cut-off, or after 2,000 at most.
            if len(sent) >= 2000 or (limits.counters["closed_send_buffer"] and len(sent) % 10 == 0):
                loop.stop()
                return
            message = f"{len(sent):06d}" + "x" * (MESSAGE - 6)
            running.registry.broadcast(message)
            sent.append(message[:6])

        loop = LoopingCall(flood)
        loop.clock = reactor
        loop.start(0.005).chainDeferred(done)
        yield done

        self.assertEqual(limits.counters["closed_send_buffer"], 1)
        self.assertEqual(slowConn.localCloseCode, 1008)
        frame = len(prepare("x" * MESSAGE).payloadHybi)
        self.assertLessEqual(peak[0], LIMIT + frame)
        # The close handshake times out (the peer never reads the close
        # frame) and the connection is dropped with its buffer.
        yield waitFor(lambda: slowSid not in running.registry, timeout=10)

        received: List[Any] = []
        for _ in sent:
            message = yield normal.nextMessage(timeout=10)
            received.append(message[:6])
        self.assertEqual(received, sent)
        self.assertEqual(running.registry.sessions(), [normalSid])
        self.assertEqual(limits.connections, 1)
