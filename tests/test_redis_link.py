"""
The command connection of L{wsglue.cluster.link.TxRedisLink}: a Redis that
answers slowly under a burst keeps its connection; one that stops
answering is cut off.  In memory: txredisapi's protocol on a
L{StringTransport}, time from a L{Clock}.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from wsglue.cluster.link import TxRedisLink, _CommandFactory
from wsglue.cluster.redisurl import parseRedisURL


def _connected(testCase: SynchronousTestCase) -> Any:
    """
    A command protocol of a link on a L{Clock}, connected to a
    L{StringTransport}; and the clock.
    """
    clock = Clock()
    link = TxRedisLink(parseRedisURL("redis://127.0.0.1:6379/0"), clock)
    factory = _CommandFactory(link, link.url)
    # As the factory builds it (txredisapi passes its replyTimeout on).
    protocol = factory.protocol(charset=None, replyTimeout=factory.replyTimeout, convertNumbers=False)
    protocol.factory = factory
    transport = StringTransport()
    protocol.makeConnection(transport)
    testCase.addCleanup(protocol.connectionLost, None)
    return protocol, transport, clock


class CommandWatchdogTests(SynchronousTestCase):
    """
    The command connection is cut off only when Redis answers nothing for
    C{replyTimeout} seconds while commands wait.
    """

    def test_slowButAnsweringKept(self) -> None:
        """
        Commands that wait longer than C{replyTimeout} behind others keep
        the connection while replies keep coming (txredisapi's own timeout,
        counted from each command's sending, would have cut it after 5 s).
        """
        protocol, transport, clock = _connected(self)
        answers: List[Any] = []
        for i in range(20):
            protocol.execute_command("GET", f"k{i}").addBoth(answers.append)
        for _ in range(10):
            clock.advance(1)
            protocol.dataReceived(b"$-1\r\n$-1\r\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(answers, [None] * 20)

    def test_silentRedisCutOff(self) -> None:
        """
        A command with no reply at all for more than C{replyTimeout} seconds
        aborts the connection (made again by txredisapi's service); its
        Deferred fails.
        """
        protocol, transport, clock = _connected(self)
        failures: List[Any] = []
        protocol.execute_command("GET", "k").addErrback(failures.append)
        for _ in range(TxRedisLink.replyTimeout):
            clock.advance(1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(len(failures), 1)

    def test_busyProcessNotTakenForSilentRedis(self) -> None:
        """
        When this process itself was busy for longer than C{replyTimeout}
        (the check runs late, the replies may wait unread behind it), the
        connection is kept and the count starts again.
        """
        protocol, transport, clock = _connected(self)
        answers: List[Any] = []
        protocol.execute_command("GET", "k").addBoth(answers.append)
        clock.advance(8)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"$-1\r\n")
        self.assertEqual(answers, [None])
        failures: List[Any] = []
        protocol.execute_command("GET", "k").addErrback(failures.append)
        for _ in range(TxRedisLink.replyTimeout + 1):
            clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_idleKept(self) -> None:
        """
        An idle connection (no command waiting) is never cut off, and a
        command after a long idle time gets its whole C{replyTimeout}.
        """
        protocol, transport, clock = _connected(self)
        clock.advance(60)
        self.assertFalse(transport.disconnecting)
        answers: List[Any] = []
        protocol.execute_command("GET", "k").addBoth(answers.append)
        clock.advance(3)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(answers, [b"v"])
        clock.advance(30)
        self.assertFalse(transport.disconnecting)
