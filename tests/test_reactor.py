"""
Tests for L{wsglue.levers.reactor}: the epoll reactor without a log context per
I/O event.

Its own tests poll a real epoll on socket pairs, one iteration at a time.
Then Twisted's own reactor test suites (TCP clients, ports, connections and
transports, aborts, file descriptor sets, system events, timed calls and
processes) run against it, as they run against every reactor Twisted ships.
"""

from __future__ import annotations

import socket
from typing import Any, List

from twisted.internet.abstract import FileDescriptor
from twisted.internet.test import test_core, test_fdset, test_process, test_tcp, test_time
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from wsglue.levers.reactor import GlueEPollReactor, installIfUnchosen


class Reader(FileDescriptor):
    """
    One end of a socket pair, recording what it reads; C{fail} makes its
    next read raise.
    """

    def __init__(self, sock: socket.socket, reactor: Any, name: str) -> None:
        FileDescriptor.__init__(self, reactor)
        self.socket = sock
        self.name = name
        self.received: List[bytes] = []
        self.lost: List[Failure] = []
        self.fail = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        if self.fail:
            raise ZeroDivisionError("a protocol bug")
        self.received.append(self.socket.recv(100))

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class DispatchTests(SynchronousTestCase):
    """
    L{GlueEPollReactor.doPoll} on real sockets.
    """

    def setUp(self) -> None:
        self.reactor = GlueEPollReactor()
        # Never run, so nothing else closes its epoll and waker descriptors.
        self.addCleanup(self.reactor._poller.close)
        self.addCleanup(self.reactor.waker.connectionLost, None)
        self.readers = []
        self.peers = []
        for name in ("first", "second"):
            mine, theirs = socket.socketpair()
            self.addCleanup(mine.close)
            self.addCleanup(theirs.close)
            mine.setblocking(False)
            reader = Reader(mine, self.reactor, name)
            self.reactor.addReader(reader)
            self.addCleanup(self.reactor.removeReader, reader)
            self.readers.append(reader)
            self.peers.append(theirs)

    def test_readEvents(self) -> None:
        """
        Every readable selectable gets its C{doRead}, in one iteration.
        """
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual([r.received for r in self.readers], [[b"one"], [b"two"]])

    def test_nothingReady(self) -> None:
        """
        With no event, an iteration with timeout 0 returns and reads nothing.
        """
        self.reactor.doPoll(0)
        self.assertEqual([r.received for r in self.readers], [[], []])

    def test_raisingReadLosesOnlyThatConnection(self) -> None:
        """
        A C{doRead} that raises loses its own connection, with the error
        logged, and the other selectables ready in the same iteration are
        served.
        """
        self.readers[0].fail = True
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(self.readers[0].lost), 1)
        self.readers[0].lost[0].trap(ZeroDivisionError)
        self.assertEqual(self.readers[1].received, [b"two"])
        self.assertEqual(self.readers[1].lost, [])

    def test_escapedErrorLoggedWithSystem(self) -> None:
        """
        An exception that escapes the reactor's own dispatch (what
        L{log.callWithLogger} caught in Twisted's reactor) is logged with the
        selectable's log prefix as its system, and the loop goes on.
        """
        events: List[dict] = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        dispatch = self.reactor._doReadOrWrite

        def broken(selectable: Any, fd: int, event: int) -> None:
            if selectable is self.readers[0]:
                raise KeyError("escaped")
            dispatch(selectable, fd, event)

        self.reactor._doReadOrWrite = broken  # type: ignore[method-assign]
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual([e["system"] for e in events if e.get("isError")], ["first"])
        self.assertEqual(self.readers[1].received, [b"two"])

    def test_removedDuringIteration(self) -> None:
        """
        A selectable removed by an earlier handler of the same iteration is
        skipped, not dispatched.
        """
        first, second = self.readers
        first.doRead = lambda: self.reactor.removeReader(second)  # type: ignore[method-assign]
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual(second.received, [])

    def test_installLeavesChosenReactor(self) -> None:
        """
        Under trial a reactor is installed already; installIfUnchosen leaves
        it alone.
        """
        from twisted.internet import reactor

        self.assertFalse(installIfUnchosen())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)


def _skipped(reason: str) -> Any:
    def test(self: Any) -> None:
        pass

    test.skip = reason  # type: ignore[attr-defined]
    return test


# The tests of Twisted's suites that do not apply, and why.
_SKIPPED = {
    # The one thing GlueEPollReactor does differently, on purpose.
    "test_logPrefix": _skipped(
        "legacy log lines written inside an I/O handler carry no system "
        "label on GlueEPollReactor (see wsglue.levers.reactor)"
    ),
    # Twisted skips it for its EPollReactor by class name.
    "test_lostFileDescriptor": _skipped("epoll cannot detect lost file descriptors"),
    # Fails the same way on Twisted's EPollReactor on this machine: the
    # child run as another user exits 1.
    "test_changeUID": _skipped("fails on Twisted's own EPollReactor here too"),
}

# Twisted's reactor test suites, built for GlueEPollReactor only.
_SUITES = (
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPFDPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AdoptStreamConnectionTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_fdset.ReactorFDSetTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_time.TimeTestsBuilder,
    test_process.ProcessTestsBuilder,
)
for _suite in _SUITES:
    _attributes = {name: test for name, test in _SKIPPED.items() if hasattr(_suite, name)}
    _attributes.update(_reactors=["wsglue.levers.reactor.GlueEPollReactor"], __module__=__name__)
    _builder = type("Glue" + _suite.__name__, (_suite,), _attributes)
    globals().update(_builder.makeTestCaseClasses())
del _suite, _attributes, _builder
