"""
wsglue's log observers (wsglue.levers.logs): the same text as Twisted's
textFileLogObserver, the same destinations as twistd's, written once per
reactor turn.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, eventAsText, formatTime, textFileLogObserver
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from tests.common import connect, cookieValue, forceLevers, freePort, spawnDaemon, waitFor
from wsglue.levers import Levers, logs
from wsglue.levers.logs import (
    CachedTimeFormat,
    TurnFileLogObserver,
    chooseTwistdLogger,
    classicFormat,
    twistdLogObserver,
)
from wsglue.process.workers import workerLines, workerLogObserver

# Central European time as a POSIX rule (no tz database needed): summer
# time starts 2026-03-29 01:00:00 UTC and ends 2026-10-25 01:00:00 UTC.
CET = "CET-1CEST,M3.5.0,M10.5.0/3"
SPRING = 1774746000
AUTUMN = 1792890000

# Fractions of a second near the edges datetime rounds across.
EDGES = [0.0, 1e-7, 0.4999995, 0.5, 0.9999984, 0.999999, 0.9999994, 0.9999995, 0.9999996, 0.9999999]


def inZone(testCase: unittest.TestCase, zone: str) -> None:
    """
    Run the rest of C{testCase} in time zone C{zone}.
    """
    old = os.environ.get("TZ")

    def restore() -> None:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()

    testCase.addCleanup(restore)
    os.environ["TZ"] = zone
    time.tzset()


class CachedTimeFormatTests(unittest.TestCase):
    """
    L{CachedTimeFormat} gives Twisted's C{formatTime} text for every time,
    in whatever order times come.
    """

    def assertSameAsTwisted(self, times: List[float], timeFormat: Any = logs.timeFormatRFC3339) -> None:
        cached = CachedTimeFormat(timeFormat)
        for when in times:
            self.assertEqual(cached(when), formatTime(when, timeFormat), repr(when))

    @given(
        st.lists(
            st.one_of(
                st.floats(min_value=0, max_value=4e9, allow_nan=False),
                st.builds(lambda s, f: s + f, st.integers(0, 4_000_000_000), st.sampled_from(EDGES)),
            ),
            min_size=1,
            max_size=50,
        )
    )
    @settings(max_examples=300, deadline=None)
    def test_anyTimes(self, times: List[float]) -> None:
        self.assertSameAsTwisted(times)

    def test_secondEdges(self) -> None:
        """
        Times within a microsecond of the next second are shown by Twisted
        as the next second; so are they here, cached or not.
        """
        base = 1_790_000_000
        times = [base + f for f in EDGES] + [base + 1 + f for f in EDGES]
        self.assertSameAsTwisted(times)
        self.assertSameAsTwisted(sorted(times, reverse=True))

    def test_summerTime(self) -> None:
        """
        Across both changes of a summer-time zone, every quarter second.
        """
        inZone(self, CET)
        for change in (SPRING, AUTUMN):
            times = [change + k / 4 for k in range(-12, 13)]
            self.assertSameAsTwisted(times)
            self.assertSameAsTwisted(times[::-1])
        self.assertNotEqual(formatTime(SPRING - 1)[-5:], formatTime(SPRING)[-5:])

    def test_fractionFormat(self) -> None:
        """
        A format showing fractions of a second is not cached.
        """
        self.assertSameAsTwisted([100.25, 100.5, 100.75], "%H:%M:%S.%f")

    def test_noTime(self) -> None:
        """
        No time, or no format: C{-}, as Twisted's.
        """
        self.assertEqual(CachedTimeFormat()(None), "-")
        self.assertEqual(CachedTimeFormat(None)(12.5), "-")

    def test_notANumber(self) -> None:
        """
        What Twisted's cannot format fails the same way.
        """
        for when in (float("nan"), float("inf")):
            with self.assertRaises(Exception) as theirs:
                formatTime(when)
            with self.assertRaises(Exception) as ours:
                CachedTimeFormat()(when)
            self.assertIs(type(ours.exception), type(theirs.exception))


class Thing:
    attr = "a thing's attribute"

    def __repr__(self) -> str:
        return "<Thing>"


class Answer(str):
    """
    An empty string that answers C{">4"} when called.
    """

    def __call__(self) -> str:
        return ">4"


class Dynamic:
    """
    Has every attribute: C{dynamic.x()} is C{">4"}, C{dynamic.x} formats
    as C{""}.
    """

    def __getattr__(self, name: str) -> Answer:
        return Answer()


class Named:
    def __str__(self) -> str:
        return "a named system"


class Nameless:
    def __str__(self) -> str:
        raise ValueError("no name")


class Unformattable:
    def __format__(self, spec: str) -> str:
        raise ValueError("no format")


def failure() -> Failure:
    try:
        1 / 0
    except ZeroDivisionError:
        return Failure()
    raise AssertionError("unreachable")


FORMATS: List[Any] = [
    "session opened: {sid}",
    "session closed: {sid}",
    "{sid!r} and {n:>5}",
    "two\nlines: {sid}",
    "no fields",
    "{thing.attr}",
    "{missing}",
    "{",
    "",
    "ünïcode {sid}",
    "{sid!s}{n!a}{thing!r}",
    "{n:{w}}",
    "{n:>{w}d}",
    "{{sid}} {sid}",
    "{sid!z}",
    "{n:q}",
    "}",
    "{}",
    "{0}",
    "{thing.attr()}",
    "{call()}",
    "{seq[0]}",
    "{bad}",
    "{sid:",
    b"bytes: {sid}",
    42,
    None,
    "{log_level}",
    "{dyn.x()}",
    "{n:{dyn.x()}}",
    "{n:{w:{dyn.x()}}}",
]

events = st.fixed_dictionaries(
    {
        "log_format": st.sampled_from(FORMATS),
        "sid": st.text(max_size=12),
        "n": st.integers(),
        "w": st.sampled_from([3, "x", None]),
        "thing": st.just(Thing()),
        "call": st.just(lambda: "called"),
        "seq": st.sampled_from([[1], (), "ab"]),
        "bad": st.just(Unformattable()),
        "dyn": st.just(Dynamic()),
    },
    optional={
        "log_time": st.one_of(
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.builds(lambda s, f: s + f, st.integers(0, 4_000_000_000), st.sampled_from(EDGES)),
        ),
        "log_level": st.sampled_from(list(LogLevel.iterconstants())),
        "log_namespace": st.text(max_size=20),
        "log_system": st.one_of(st.text(max_size=20), st.integers(), st.just(Named()), st.just(Nameless())),
        "log_failure": st.builds(failure),
        "log_flattened": st.just({}),
    },
)


class ClassicFormatTests(unittest.TestCase):
    """
    L{classicFormat} writes what Twisted's C{textFileLogObserver} writes.
    """

    @given(st.lists(events, min_size=1, max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_sameText(self, sequence: List[Dict[str, Any]]) -> None:
        theirs = io.StringIO()
        observe = textFileLogObserver(theirs)
        ours = classicFormat()
        expected, got = [], []
        for event in sequence:
            before = theirs.tell()
            observe(dict(event))
            expected.append(theirs.getvalue()[before:])
            got.append(ours(dict(event)) or "")
        self.assertEqual(got, expected)

    def test_everyFormat(self) -> None:
        """
        Each format of L{FORMATS}, with values that fit its fields and
        values that do not, and each kind of system.
        """
        expected, got = [], []
        ours = classicFormat()
        for format in FORMATS:
            for n, w in [(5, 3), (-3, 4), (12345, "x"), (0, None)]:
                for system in [
                    {},
                    {"log_system": "sys"},
                    {"log_system": 7},
                    {"log_system": Named()},
                    {"log_system": Nameless()},
                    {"log_namespace": "ns", "log_level": LogLevel.warn},
                ]:
                    event = dict(
                        log_format=format,
                        log_time=1_790_000_000.25,
                        sid="3f2a9c1e",
                        n=n,
                        w=w,
                        thing=Thing(),
                        call=lambda: "called",
                        seq=[1],
                        bad=Unformattable(),
                        dyn=Dynamic(),
                        **system,
                    )
                    theirs = io.StringIO()
                    textFileLogObserver(theirs)(dict(event))
                    expected.append(theirs.getvalue())
                    got.append(ours(dict(event)) or "")
        self.assertEqual(got, expected)

    def test_sessionLine(self) -> None:
        inZone(self, "UTC0")
        line = classicFormat()(
            {
                "log_format": "session opened: {sid}",
                "sid": "3f2a9c1e",
                "log_time": 1_790_000_000.5,
                "log_level": LogLevel.info,
                "log_namespace": "wsglue.protocol",
            }
        )
        self.assertEqual(line, "2026-09-21T14:13:20+0000 [wsglue.protocol#info] session opened: 3f2a9c1e\n")


class Recorder:
    """
    A text file that keeps each C{write} and counts C{flush}es.
    """

    def __init__(self) -> None:
        self.writes: List[str] = []
        self.flushes = 0

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        self.flushes += 1

    @property
    def text(self) -> str:
        return "".join(self.writes)


def event(text: str, level: Any = LogLevel.info) -> Dict[str, Any]:
    return {"log_format": text, "log_level": level, "log_time": 1_790_000_000.0, "log_namespace": "test"}


def plain(event: Dict[str, Any]) -> str:
    return event["log_format"] + "\n"


class TurnFileLogObserverTests(unittest.TestCase):
    """
    L{TurnFileLogObserver} writes a reactor turn's lines with one write, at
    the end of the turn, and anything urgent at once.
    """

    def setUp(self) -> None:
        # The test runs in the reactor's thread (trial's).
        threadable.registerAsIOThread()
        self.clock = MemoryReactorClock()
        self.clock.running = True
        self.out = Recorder()
        self.observer = TurnFileLogObserver(self.out, plain, self.clock)

    def test_oneWritePerTurn(self) -> None:
        for n in range(3):
            self.observer(event(f"line {n}"))
        self.assertEqual(self.out.writes, [])
        self.clock.advance(0)
        self.assertEqual(self.out.writes, ["line 0\nline 1\nline 2\n"])
        self.assertEqual(self.out.flushes, 1)
        self.observer(event("next turn"))
        self.clock.advance(0)
        self.assertEqual(self.out.writes[1:], ["next turn\n"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_urgentAtOnce(self) -> None:
        """
        A warning or worse is written at once, after what the turn held.
        """
        for level in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.observer(event("held"))
            self.observer(event(level.name, level))
            self.assertEqual(self.out.writes[-1], f"held\n{level.name}\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.observer(event("debug", LogLevel.debug))
        self.assertEqual(self.out.writes[-1], "held\ncritical\n")
        self.clock.advance(0)
        self.assertEqual(self.out.writes[-1], "debug\n")

    def test_notRunning(self) -> None:
        """
        Before the reactor runs and after it stopped, lines go at once.
        """
        self.observer(event("held"))
        self.clock.running = False
        self.observer(event("stopped"))
        self.assertEqual(self.out.text, "held\nstopped\n")

    def test_shutdown(self) -> None:
        """
        What is held when the reactor shuts down is written.
        """
        self.observer(event("last words"))
        triggers = self.clock.triggers["after"]["shutdown"]
        self.assertEqual(len(triggers), 1)
        call, args, kwargs = triggers[0]
        call(*args, **kwargs)
        self.assertEqual(self.out.text, "last words\n")

    def test_otherThread(self) -> None:
        """
        A line from another thread is written at once, by that thread,
        without touching what the reactor's thread holds.
        """
        self.observer(event("held"))
        thread = threading.Thread(target=self.observer, args=(event("from a thread"),))
        thread.start()
        thread.join(10)
        self.assertEqual(self.out.writes, ["from a thread\n"])
        self.clock.advance(0)
        self.assertEqual(self.out.writes, ["from a thread\n", "held\n"])

    def test_nothingToWrite(self) -> None:
        """
        An event its formatter leaves out writes nothing, not even an
        empty line or an empty write.
        """
        observer = TurnFileLogObserver(self.out, lambda e: None, self.clock)
        observer(event("x"))
        self.clock.advance(0)
        self.assertEqual(self.out.writes, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_formattedWhenWritten(self) -> None:
        """
        Held events are formatted when the turn's lines are written, in the
        order they were observed; a formatter that raises gives Twisted's
        text for the event instead of losing the line or the turn's others.
        """
        formatted: List[str] = []

        def formatter(e: Dict[str, Any]) -> str:
            formatted.append(e["log_format"])
            if e["log_format"] == "bad":
                raise ValueError("no")
            return e["log_format"] + "\n"

        observer = TurnFileLogObserver(self.out, formatter, self.clock)
        observer(event("one"))
        observer(event("bad"))
        observer(event("two"))
        self.assertEqual(formatted, [])
        self.clock.advance(0)
        self.assertEqual(formatted, ["one", "bad", "two"])
        # Twisted's formatEvent gives "bad" its format's text.
        self.assertEqual(self.out.writes, ["one\nbad\ntwo\n"])

    def test_binaryFile(self) -> None:
        """
        A file opened in binary, like twistd's log file, gets UTF-8.
        """
        path = self.mktemp()
        os.mkdir(path)
        logFile = LogFile("test.log", path)
        self.addCleanup(logFile.close)
        observer = TurnFileLogObserver(logFile, plain, self.clock)
        observer(event("ünïcode"))
        self.clock.advance(0)
        with open(os.path.join(path, "test.log"), "rb") as f:
            self.assertEqual(f.read(), "ünïcode\n".encode("utf-8"))


class WorkerLinesTests(unittest.TestCase):
    """
    What a worker writes for its parent to relay.
    """

    def test_lines(self) -> None:
        self.assertEqual(workerLines(event("session opened: 3f2a9c1e")), "info session opened: 3f2a9c1e\n")
        self.assertEqual(workerLines(event("a\nb", LogLevel.warn)), "warn a\nwarn b\n")
        self.assertIsNone(workerLines(event("")))

    @given(events)
    @settings(max_examples=300, deadline=None)
    def test_sameTextAsTwisted(self, logged: Dict[str, Any]) -> None:
        """
        A worker's lines carry the text Twisted's C{eventAsText} gives the
        event (its traceback included), each after the level's name.
        """
        text = eventAsText(dict(logged), includeTimestamp=False, includeSystem=False)
        name = getattr(logged.get("log_level"), "name", "info")
        expected = "".join(f"{name} {line}\n" for line in text.splitlines()) or None
        self.assertEqual(workerLines(dict(logged)), expected)

    def test_observer(self) -> None:
        """
        The worker's observer is a L{TurnFileLogObserver} on its stdout.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(Levers, "_current", Levers(True))
        observer = workerLogObserver()
        self.assertIsInstance(observer, TurnFileLogObserver)
        observer(event("session opened: 3f2a9c1e"))
        observer.flush()
        self.assertEqual(out.getvalue(), "info session opened: 3f2a9c1e\n")


class TwistdLoggerTests(unittest.TestCase):
    """
    C{twistd wsglue} logs through L{twistdLogObserver} where twistd would,
    unless told C{--logger} or C{--syslog}.
    """

    def setUp(self) -> None:
        forceLevers(self)
        saved = dict(logs._twistdOptions)
        self.addCleanup(lambda: (logs._twistdOptions.clear(), logs._twistdOptions.update(saved)))
        handler = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, handler)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def parse(self, *twistd: str) -> ServerOptions:
        config = ServerOptions()
        config.parseOptions([*twistd, "wsglue", "--port", "tcp:0:interface=127.0.0.1"])
        return config

    def test_chosen(self) -> None:
        self.assertIs(self.parse("-n")["logger"], twistdLogObserver)
        self.assertEqual(logs._twistdOptions, {"logfile": None, "nodaemon": True})
        self.assertIs(self.parse("--logfile", "x.log")["logger"], twistdLogObserver)
        self.assertEqual(logs._twistdOptions, {"logfile": "x.log", "nodaemon": False})

    def test_userChoice(self) -> None:
        """
        C{--logger} and C{--syslog} are the user's choice: left to twistd.
        """
        config = self.parse("-n", "--logger", "wsglue.process.workers.workerLogObserver")
        self.assertIs(config["logger"], workerLogObserver)
        config = self.parse("--syslog")
        self.assertIsNone(config["logger"])
        self.assertTrue(config["syslog"])

    def test_withoutTwistd(self) -> None:
        self.assertFalse(chooseTwistdLogger(None))

    def observe(self, **options: Any) -> Any:
        logs._twistdOptions.clear()
        logs._twistdOptions.update(options)
        return twistdLogObserver()

    def test_stdout(self) -> None:
        """
        C{-n}, and C{-n --logfile -}: standard output.
        """
        for options in ({"nodaemon": True, "logfile": None}, {"nodaemon": True, "logfile": "-"}):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            observer = self.observe(**options)
            observer(event("to stdout"))
            observer.flush()
            self.assertIn(" [test#info] to stdout\n", out.getvalue())

    def test_daemonToStdout(self) -> None:
        with self.assertRaises(SystemExit) as e:
            self.observe(nodaemon=False, logfile="-")
        self.assertEqual(str(e.exception.code), "Daemons cannot log to stdout, exiting!")

    @inlineCallbacks
    def test_logfile(self) -> Any:
        """
        C{--logfile PATH}, or C{twistd.log} for a daemon: a twistd log file,
        rotated on SIGUSR1.
        """
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        path = os.path.join(folder, "glue.log")
        observer = self.observe(nodaemon=True, logfile=path)
        self.addCleanup(observer._file.close)
        observer(event("to the file"))
        observer.flush()
        with open(path) as f:
            self.assertIn(" [test#info] to the file\n", f.read())
        rotate = signal.getsignal(signal.SIGUSR1)
        self.assertTrue(callable(rotate))
        rotate(signal.SIGUSR1, None)
        yield waitFor(lambda: os.path.exists(path + ".1"))

        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(folder)
        observer = self.observe(nodaemon=False, logfile=None)
        self.addCleanup(observer._file.close)
        self.assertEqual(observer._file.path, os.path.join(folder, "twistd.log"))

    def test_rotationHandlerKept(self) -> None:
        """
        A SIGUSR1 handler someone set is left in place, as twistd does.
        """

        def mine(signum: int, frame: Any) -> None:
            pass

        signal.signal(signal.SIGUSR1, mine)
        path = os.path.abspath(self.mktemp())
        observer = self.observe(nodaemon=True, logfile=path)
        self.addCleanup(observer._file.close)
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)


class DaemonLogTests(unittest.TestCase):
    """
    A real C{twistd -n --logfile PATH wsglue}: its lines land in the file,
    in Twisted's format.
    """

    @inlineCallbacks
    def test_sessionLinesInLogFile(self) -> Any:
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        path = os.path.join(folder, "glue.log")
        port = freePort()
        daemon = spawnDaemon(self, ["--port", f"tcp:{port}:interface=127.0.0.1"], twistdArgs=["--logfile", path])

        def logged() -> str:
            try:
                with open(path) as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        yield waitFor(lambda: "started websocket server at" in logged(), timeout=20)
        client = yield connect(self, port)
        sid = cookieValue(client.setCookie)
        yield waitFor(lambda: f"session opened: {sid[:8]}" in logged())
        client.transport.loseConnection()
        yield waitFor(lambda: f"session closed: {sid[:8]}" in logged())
        for line in logged().splitlines():
            if f"session opened: {sid[:8]}" in line:
                self.assertRegex(
                    line,
                    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[wsglue\.protocol#info\] session opened: [0-9a-f]{8}$",
                )
        yield daemon.stop()
        self.assertNotIn("Traceback", logged())


class RelayTests(unittest.TestCase):
    """
    The parent of C{--workers} logs each line a worker writes, at its
    level, labelled with the worker's pid, however the pipe splits it.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from wsglue.process import workers

        self.events: List[Dict[str, Any]] = []
        self.patch(workers, "_log", Logger(namespace="wsglue.process.workers", observer=self.events.append))
        pool = type("Pool", (), {"reactor": Clock()})()
        self.worker = workers._WorkerProtocol(pool, 1)
        self.worker.pid = 4321

    def relayed(self) -> List[Any]:
        from twisted.logger import formatEvent

        return [(e["log_level"], formatEvent(e)) for e in self.events]

    def test_levels(self) -> None:
        written = "".join(
            [
                workerLines(event("session opened: 3f2a9c1e")) or "",
                workerLines(event("slow\nconsumer", LogLevel.warn)) or "",
                workerLines(event("bad", LogLevel.error)) or "",
                workerLines(event("worse", LogLevel.critical)) or "",
                workerLines(event("detail", LogLevel.debug)) or "",
                "no level name here\n",
                "\n",
            ]
        )
        self.worker.childDataReceived(1, written.encode("utf-8"))
        self.assertEqual(
            self.relayed(),
            [
                (LogLevel.info, "[worker 4321] session opened: 3f2a9c1e"),
                (LogLevel.warn, "[worker 4321] slow"),
                (LogLevel.warn, "[worker 4321] consumer"),
                (LogLevel.error, "[worker 4321] bad"),
                (LogLevel.critical, "[worker 4321] worse"),
                (LogLevel.info, "[worker 4321] detail"),
                (LogLevel.info, "[worker 4321] no level name here"),
            ],
        )

    @given(st.lists(st.integers(1, 40), max_size=20))
    @settings(max_examples=100, deadline=None)
    def test_anySplit(self, cuts: List[int]) -> None:
        """
        Lines split anywhere, inside a UTF-8 sequence too, come out whole.
        """
        del self.events[:]
        data = "info ünïcode line one\nwarn ✓ two\ninfo three\n".encode("utf-8")
        at = 0
        for cut in cuts:
            self.worker.childDataReceived(1, data[at : at + cut])
            at += cut
        self.worker.childDataReceived(1, data[at:])
        self.assertEqual(
            self.relayed(),
            [
                (LogLevel.info, "[worker 4321] ünïcode line one"),
                (LogLevel.warn, "[worker 4321] ✓ two"),
                (LogLevel.info, "[worker 4321] three"),
            ],
        )
