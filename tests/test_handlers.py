"""
Tests for L{wsglue.handlers} (loading a handler, the adapter that calls it,
the default ping/pong handler) and the example in L{wsglue.examples.clock}.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.handlers_for_tests import (
    BrokenClosed,
    BrokenOpened,
    HandlerError,
    OnlyReceived,
    Recorder,
    makeRecorder,
)
from tests.test_registry import FakeConnection
from wsglue.examples.clock import Clock as ClockHandler
from wsglue.handlers import HandlerAdapter, PingPong, loadHandler
from wsglue.registry import SessionRegistry

SID = "0123456789abcdef0123456789abcdef01234567"


class LoadHandlerTests(SynchronousTestCase):
    """
    L{loadHandler} imports C{MODULE:NAME} or says why it cannot.
    """

    def test_class(self) -> None:
        """
        A class is loaded.
        """
        self.assertIs(loadHandler("tests.handlers_for_tests:Recorder"), Recorder)

    def test_function(self) -> None:
        """
        A factory function is loaded.
        """
        self.assertIs(loadHandler("tests.handlers_for_tests:makeRecorder"), makeRecorder)

    def test_example(self) -> None:
        """
        The shipped example handler is loadable by its documented name.
        """
        self.assertIs(loadHandler("wsglue.examples.clock:Clock"), ClockHandler)

    def test_noColon(self) -> None:
        """
        A spec without C{:} is a L{ValueError} saying the expected form.
        """
        exc = self.assertRaises(ValueError, loadHandler, "tests.handlers_for_tests")
        self.assertIn("MODULE:NAME", str(exc))

    def test_moduleMissing(self) -> None:
        """
        A module that cannot be imported is a L{ValueError} naming it.
        """
        exc = self.assertRaises(ValueError, loadHandler, "no_such_module_here:X")
        self.assertIn("cannot import no_such_module_here", str(exc))

    def test_attributeMissing(self) -> None:
        """
        A name the module lacks is a L{ValueError} naming it.
        """
        exc = self.assertRaises(ValueError, loadHandler, "tests.handlers_for_tests:Nope")
        self.assertIn("has no Nope", str(exc))

    def test_notCallable(self) -> None:
        """
        A name that is not callable is a L{ValueError}.
        """
        exc = self.assertRaises(ValueError, loadHandler, "tests.handlers_for_tests:NOT_CALLABLE")
        self.assertIn("not callable", str(exc))


class AdapterTests(SynchronousTestCase):
    """
    L{HandlerAdapter} calls the handler's optional methods, sends what
    C{received} returns, and contains what the handler raises.
    """

    def setUp(self) -> None:
        self.registry = SessionRegistry()
        self.conn = FakeConnection()
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def adapter(self, factory: Any = Recorder) -> Tuple[HandlerAdapter, Any]:
        handler = factory(self.registry)
        return HandlerAdapter(handler), handler

    def adapterReturning(self, result: Any) -> HandlerAdapter:
        handler = OnlyReceived(self.registry)
        handler.received = lambda sid, conn, message: result  # type: ignore[method-assign]
        return HandlerAdapter(handler)

    def test_callsThrough(self) -> None:
        """
        C{opened}, C{received} and C{closed} reach the handler with the
        session id, the connection and the message.
        """
        adapter, handler = self.adapter()
        adapter.opened(SID, self.conn)
        adapter.received(SID, self.conn, "none")
        adapter.received(SID, self.conn, b"\x01")
        adapter.closed(SID, self.conn)
        self.assertEqual(
            handler.events,
            [
                ("opened", SID, self.conn),
                ("received", SID, self.conn, "none"),
                ("received", SID, self.conn, b"\x01"),
                ("closed", SID, self.conn),
            ],
        )

    def test_optionalMethods(self) -> None:
        """
        A handler without C{opened}/C{closed} is fine.
        """
        adapter, _ = self.adapter(OnlyReceived)
        adapter.opened(SID, self.conn)
        adapter.received(SID, self.conn, "x")
        adapter.closed(SID, self.conn)
        self.assertEqual(self.conn.sent, ["only"])

    def test_strResultSent(self) -> None:
        """
        A C{str} returned by C{received} is sent on the connection.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "echo hi")
        self.assertEqual(self.conn.sent, ["echo: hi"])

    def test_bytesResultSent(self) -> None:
        """
        C{bytes} returned by C{received} are sent as they are.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, b"\x01\x02")
        self.assertEqual(self.conn.sent, [b"\x02\x01"])

    def test_noneSendsNothing(self) -> None:
        """
        C{None} from C{received} sends nothing.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "none")
        self.assertEqual(self.conn.sent, [])
        self.assertEqual(self.conn.prepared, [])

    def test_deferredResultSent(self) -> None:
        """
        A Deferred returned by C{received} has its result sent when it fires.
        """
        d: Deferred = Deferred()
        adapter = self.adapterReturning(d)
        adapter.received(SID, self.conn, "x")
        self.assertEqual(self.conn.sent, [])
        d.callback("late")
        self.assertEqual(self.conn.sent, ["late"])

    def test_firedDeferredResultSent(self) -> None:
        """
        An already-fired Deferred has its result sent at once.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "now x")
        self.assertEqual(self.conn.sent, ["now: x"])

    def test_deferredNoneSendsNothing(self) -> None:
        """
        A Deferred firing with C{None} sends nothing.
        """
        d: Deferred = Deferred()
        adapter = self.adapterReturning(d)
        adapter.received(SID, self.conn, "x")
        d.callback(None)
        self.assertEqual(self.conn.sent, [])

    def assertLoggedOnce(self, where: str) -> None:
        """
        Exactly one L{HandlerError} was logged, for C{where}, with the short
        session id only.
        """
        self.assertEqual(len(self.flushLoggedErrors(HandlerError)), 1)
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["sid"], SID[:8])
        self.assertIn(where, str(failures[0].get("where", failures[0]["log_format"])))

    def test_receivedRaises(self) -> None:
        """
        An exception in C{received} is logged with its traceback and not
        raised to the caller; nothing is sent.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "boom")
        self.assertLoggedOnce("received")
        self.assertEqual(self.conn.sent, [])

    def test_receivedFailedDeferred(self) -> None:
        """
        A Deferred from C{received} that fails is logged, not left unhandled.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "fail")
        self.assertLoggedOnce("received")
        self.assertEqual(self.conn.sent, [])

    def test_openedRaises(self) -> None:
        """
        An exception in C{opened} is logged and contained.
        """
        adapter, _ = self.adapter(BrokenOpened)
        adapter.opened(SID, self.conn)
        self.assertLoggedOnce("opened")

    def test_closedRaises(self) -> None:
        """
        An exception in C{closed} is logged and contained.
        """
        adapter, _ = self.adapter(BrokenClosed)
        adapter.closed(SID, self.conn)
        self.assertLoggedOnce("closed")

    def test_keepsWorkingAfterAnException(self) -> None:
        """
        After a handler exception the next message is handled as usual.
        """
        adapter, _ = self.adapter()
        adapter.received(SID, self.conn, "boom")
        adapter.received(SID, self.conn, "echo again")
        self.flushLoggedErrors(HandlerError)
        self.assertEqual(self.conn.sent, ["echo: again"])


class PingPongTests(SynchronousTestCase):
    """
    The default handler, through the same adapter as any handler.
    """

    def setUp(self) -> None:
        self.adapter = HandlerAdapter(PingPong(SessionRegistry()))
        self.conn = FakeConnection()

    def test_ping(self) -> None:
        """
        C{ping} is answered C{pong}.
        """
        self.adapter.received(SID, self.conn, "ping")
        self.assertEqual(self.conn.sent, ["pong"])

    def test_otherText(self) -> None:
        """
        Any other text, the empty message and C{PING} included, is answered
        C{ok}.
        """
        for message in ("hello", "", "PING", "ping "):
            self.adapter.received(SID, self.conn, message)
        self.assertEqual(self.conn.sent, ["ok"] * 4)

    def test_binaryRefused(self) -> None:
        """
        A binary message closes the connection with 1003 and is not answered.
        """
        self.adapter.received(SID, self.conn, b"ping")
        self.assertEqual(self.conn.sent, [])
        self.assertEqual([code for code, reason in self.conn.closes], [1003])


class ClockExampleTests(SynchronousTestCase):
    """
    The example handler pushes the time to every session on its own.
    """

    def setUp(self) -> None:
        self.registry = SessionRegistry()
        self.clock = Clock()
        self.handler = ClockHandler(self.registry, clock=self.clock, now=lambda: 86400.0)
        self.conn = FakeConnection()
        self.registry.add(SID, self.conn)
        self.handler.opened(SID, self.conn)
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.registry.remove(SID, self.conn)
        self.handler.closed(SID, self.conn)

    def texts(self) -> List[Any]:
        return self.conn.sent + [p.payloadHybi[2:].decode() for p in self.conn.prepared]

    def test_greets(self) -> None:
        """
        A new connection is greeted through the registry with its short id.
        """
        self.assertEqual(self.texts(), ["hello " + SID[:8]])

    def test_ticks(self) -> None:
        """
        Every second every connection gets the time.
        """
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.texts()[1:], ["time 1970-01-02T00:00:00Z"] * 2)

    def test_answersTime(self) -> None:
        """
        C{time} is answered with the time; anything else is not answered.
        """
        self.assertEqual(self.handler.received(SID, self.conn, "time"), "time 1970-01-02T00:00:00Z")
        self.assertIsNone(self.handler.received(SID, self.conn, "ping"))

    def test_stopsWhenEmpty(self) -> None:
        """
        Once the last connection is gone no timer is left running.
        """
        self.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
