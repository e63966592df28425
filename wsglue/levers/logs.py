"""
Log observers: Twisted's text format, at a gateway's rate.

Every WebSocket session logs two lines (C{session opened}, C{session
closed}).  Under twistd they go through Twisted's C{textFileLogObserver},
which builds a time zone and a C{datetime} to format the time of every
event and flushes after every line: one C{write()} per line, to a pipe or
a terminal often one wake-up of the reader too.  At thousands of
handshakes per second that was about a third of a wsglue process's CPU
time per handshake (see the README's Performance section).

  - L{CachedTimeFormat} is Twisted's C{formatTime}, computed once per
    second of log time: its text cannot change within a second.
  - L{formatEvent} is Twisted's C{formatEvent}, by C{str.format_map}
    when the format's fields are plain names (C{session opened: {sid}}),
    for which both give the same text: Twisted's C{string.Formatter} walk
    cost several times more.  L{classicFormat} lays the line out around
    it as Twisted does.
  - L{TurnFileLogObserver} writes the lines of one reactor turn with one
    C{write()} at the end of the turn.  A warning or worse, a line logged
    while the reactor is not running, or from another thread, is written
    at once.
  - L{twistdLogObserver} is the observer C{twistd wsglue} logs through
    (L{chooseTwistdLogger}): twistd's own choice of destination (standard
    output with C{-n}, C{--logfile} rotated on SIGUSR1, C{twistd.log}) and
    line format (L{classicFormat}), with the two above.  C{--logger} and
    C{--syslog} are left to twistd.
"""

from __future__ import annotations

import math
import signal
import sys
from functools import lru_cache
from string import Formatter
from typing import Any, Callable, Dict, List, Optional

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.logger import formatEvent as twistedFormatEvent
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

_FORMATTER = Formatter()

# Flushed at once: whoever reads the log should see these without delay.
_URGENT = frozenset((LogLevel.warn, LogLevel.error, LogLevel.critical))

# datetime rounds a time to the microsecond: from here on, a time's text
# may already show the next second.
_LAST_MICROSECOND = 0.999999


class CachedTimeFormat:
    """
    C{twisted.logger.formatTime(when, timeFormat)}, computed once per
    second of C{when}.

    The text of a format without fractions of a second (C{%f}) is the same
    for every instant of one second: the local time's offset changes only
    on whole seconds.  Formats with C{%f}, and anything that is not a
    plain number of seconds, go to C{formatTime} every time.
    """

    def __init__(self, timeFormat: Optional[str] = timeFormatRFC3339) -> None:
        self.timeFormat = timeFormat
        self._cacheable = timeFormat is not None and "%f" not in timeFormat
        self._second: Optional[int] = None
        self._text = ""

    def __call__(self, when: Optional[float]) -> str:
        if not self._cacheable or when is None:
            return formatTime(when, self.timeFormat)
        try:
            second = math.floor(when)
            late = when - second >= _LAST_MICROSECOND
        except (TypeError, ValueError, OverflowError):
            return formatTime(when, self.timeFormat)
        if late:
            return formatTime(when, self.timeFormat)
        if second != self._second:
            self._text = formatTime(when, self.timeFormat)
            self._second = second
        return self._text


@lru_cache(maxsize=256)
def _plainFormat(format: str, depth: int = 2) -> bool:
    """
    Whether C{format.format_map(event)} is what Twisted's C{formatEvent}
    makes of C{format}: every field, and every field in a field's format
    spec, is a name (no call, attribute, item or position), with a
    conversion and a spec at most.  Twisted looks such a name up in the
    event and converts and formats the value as C{str.format} does.
    """
    try:
        for _, name, spec, _ in _FORMATTER.parse(format):
            if name is None:
                continue
            if not name.isidentifier():
                return False
            if spec and "{" in spec and (depth == 0 or not _plainFormat(spec, depth - 1)):
                return False
    except ValueError:
        return False
    return True


def formatEvent(event: Dict[str, Any]) -> str:
    """
    Twisted's C{formatEvent}: the text of C{event}'s C{log_format}.  An
    event in the common form (a plain format, see L{_plainFormat}, and no
    C{log_flattened}) is formatted by C{str.format_map}; any other event,
    or one that fails so, by Twisted.
    """
    format = event.get("log_format")
    if type(format) is str and "log_flattened" not in event and _plainFormat(format):
        try:
            return format.format_map(event)
        except BaseException:
            pass  # Twisted's text for what cannot be formatted
    return twistedFormatEvent(event)


def classicFormat(timeFormat: Optional[str] = timeFormatRFC3339) -> Callable[[Dict[str, Any]], Optional[str]]:
    """
    The event formatter of Twisted's C{textFileLogObserver}
    (C{formatEventAsClassicLogText}), with a L{CachedTimeFormat}; an event
    without a failure goes through L{formatEvent} and Twisted's layout
    (C{eventAsText}'s) repeated here.
    """
    cachedTime = CachedTimeFormat(timeFormat)

    def classic(event: Dict[str, Any]) -> Optional[str]:
        if "log_failure" in event:
            return formatEventAsClassicLogText(event, formatTime=cachedTime)
        text = formatEvent(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        elif type(system) is not str:
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        line = f"{cachedTime(event.get('log_time'))} [{system}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"

    return classic


@implementer(ILogObserver)
class TurnFileLogObserver:
    """
    Twisted's C{FileLogObserver}, writing once per reactor turn.

    Each event is held, and formatted with C{formatEvent} when it is
    written, with what else the turn logged, by one C{write()} and
    C{flush()} of C{outFile} when the turn ends (a C{callLater(0)}) or when
    the reactor shuts down: formatting a turn's events one after the other
    costs less than formatting each amid the work of a handshake.  Events
    of level warn or worse, events observed while C{reactor} is not
    running, and events from a thread other than the reactor's are written
    at once (with whatever is held before them).  As Twisted warns of such
    observers, a value an event holds is formatted as it is at the end of
    the turn.
    """

    def __init__(
        self,
        outFile: Any,
        formatEvent: Callable[[Dict[str, Any]], Optional[str]],
        reactor: Any = None,
    ) -> None:
        self._file = outFile
        self._encoding = None if ioType(outFile) is str else "utf-8"
        self.formatEvent = formatEvent
        self._reactor = reactor
        self._held: List[Dict[str, Any]] = []
        self._flushing: Any = None
        if reactor is not None:
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: Dict[str, Any]) -> None:
        reactor = self._reactor
        if reactor is None or not isInIOThread():
            # Not the reactor's thread (or none yet): as Twisted's.
            text = self.formatEvent(event)
            if text:
                self._write(text)
            return
        self._held.append(event)
        if not reactor.running or event.get("log_level") in _URGENT:
            self.flush()
        elif self._flushing is None:
            self._flushing = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write what is held now.
        """
        flushing, self._flushing = self._flushing, None
        if flushing is not None and flushing.active():
            flushing.cancel()
        if self._held:
            held, self._held = self._held, []
            text = "".join([t for t in map(self._format, held) if t])
            if text:
                self._write(text)

    def _format(self, event: Dict[str, Any]) -> Optional[str]:
        try:
            return self.formatEvent(event)
        except Exception:
            # What Twisted's formatter makes of it (it does not raise).
            return twistedFormatEvent(event) + "\n"

    def _write(self, text: str) -> None:
        if self._encoding is None:
            self._file.write(text)
        else:
            self._file.write(text.encode(self._encoding))
        self._file.flush()


# twistd's options that decide where it logs, kept by chooseTwistdLogger
# for twistdLogObserver (twistd calls a --logger factory with no arguments).
_twistdOptions: Dict[str, Any] = {}

LOGGER = "wsglue.levers.logs.twistdLogObserver"


def chooseTwistdLogger(serverOptions: Any) -> bool:
    """
    Make twistd log through L{twistdLogObserver} unless its user chose how
    (C{--logger}, C{--syslog}); return whether it will.

    @param serverOptions: twistd's options (the parent of wsglue's), or
        L{None} when wsglue's options are parsed on their own.
    """
    if serverOptions is None:
        return False
    try:
        chosen = serverOptions["logger"] or serverOptions.get("syslog")
    except KeyError:
        return False
    if chosen:
        return False
    _twistdOptions.clear()
    _twistdOptions.update(
        logfile=serverOptions.get("logfile"),
        nodaemon=bool(serverOptions.get("nodaemon")),
    )
    # twistd resolves the name itself (ServerOptions.postOptions).
    serverOptions["logger"] = LOGGER
    return True


def twistdLogObserver() -> TurnFileLogObserver:
    """
    The log observer of C{twistd wsglue}: where twistd's own would write
    (C{UnixAppLogger._getLogObserver}), in its format, through
    L{TurnFileLogObserver} and L{CachedTimeFormat}.
    """
    from twisted.internet import reactor

    logfile = _twistdOptions.get("logfile")
    nodaemon = _twistdOptions.get("nodaemon", False)
    if logfile == "-":
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        out: Any = sys.stdout
    elif nodaemon and not logfile:
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(logfile or "twistd.log")
        # As twistd: SIGUSR1 rotates the file, unless a handler is set.
        if not signal.getsignal(signal.SIGUSR1):
            threads: Any = reactor  # it provides IReactorThreads

            def rotate(signum: int, frame: Any) -> None:
                threads.callFromThread(out.rotate)

            signal.signal(signal.SIGUSR1, rotate)
    return TurnFileLogObserver(out, classicFormat(), reactor)


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: it writes Twisted's own line
    format, built from C{twisted.logger}'s public formatting functions.
    """
    return None
