"""
The speed levers: everything in wsglue that replaces or overrides code of
Autobahn or Twisted for speed.  The gateway itself (L{wsglue.protocol},
L{wsglue.web}, L{wsglue.registry}) is written on their public API and is
complete without them; a lever only makes it faster.

  - L{wsglue.levers.protocol}: the quick opening handshake, the short frame
    reader and direct writes, connection compaction, lazy per-connection
    state, deferred debug-log arguments;
  - L{wsglue.levers.front}: a connection starts as the WebSocket protocol;
  - L{wsglue.levers.masking}: unmasking small frames without a native call;
  - L{wsglue.levers.fastwrite}: writes handed to the kernel at once;
  - L{wsglue.levers.timer}: Autobahn's protocol timers at the times asked
    for (Autobahn's own round them to whole seconds);
  - L{wsglue.levers.reactor}: the epoll reactor without a log context per
    I/O event;
  - L{wsglue.levers.logs}: the log observer (time text made once per
    second, one write per reactor turn);
  - L{wsglue.levers.collector}: the garbage collector tuned for many
    long-lived sessions.

Nothing here acts when imported.  L{Levers.choose} decides once per
process, from C{--no-levers}, the C{WSGLUE_NO_LEVERS} environment variable
and the installed versions of Twisted and Autobahn (outside the range the
levers were tested on they stay off, with one warning line); then
L{Levers.installProcessLevers} (the reactor and the log observer, which
twistd sets up before it builds the service) and L{Levers.apply} (the rest,
on the service's parts) turn them on.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from twisted.logger import Logger

_log = Logger()

# The environment variable that turns the levers off (as --no-levers does).
ENVIRONMENT_VARIABLE = "WSGLUE_NO_LEVERS"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

# The releases the levers were tested on: at least the first, below the
# second.  setup.py declares the same ranges.
TESTED: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "Twisted": ((26, 4), (27,)),
    "autobahn": ((23, 1, 2), (27,)),
}

# Every lever, in the order apply turns them on.
NAMES = (
    "reactor",
    "log-observer",
    "debug-arguments",
    "masking",
    "connection",
    "front",
    "timer",
    "immediate-writes",
    "collector",
)


def versionTuple(version: str) -> Tuple[int, ...]:
    """
    The leading numbers of a version string (C{"26.10.0rc1"} -> C{(26, 10, 0)}).
    """
    numbers: List[int] = []
    for part in version.split("."):
        digits = ""
        for c in part:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


def installedVersions() -> Dict[str, str]:
    """
    The installed versions of the libraries whose internals the levers use.
    """
    import autobahn

    import twisted

    return {"Twisted": twisted.__version__, "autobahn": autobahn.__version__}


def versionProblem(versions: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """
    Why the installed versions rule the levers out, or C{None} if they are
    inside the tested range.
    """
    if versions is None:
        versions = installedVersions()
    for name, (floor, cap) in TESTED.items():
        version = versions.get(name, "")
        number = versionTuple(version)
        if not (floor <= number < cap):
            low = ".".join(map(str, floor))
            high = ".".join(map(str, cap))
            return f"{name} {version} is outside the tested range >={low},<{high}"
    return None


def offInEnvironment(environ: Mapping[str, str]) -> bool:
    """
    Whether C{environ} turns the levers off (C{WSGLUE_NO_LEVERS=1}).

    @raise ValueError: for a value that is neither on nor off.
    """
    value = environ.get(ENVIRONMENT_VARIABLE)
    if value is None:
        return False
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENVIRONMENT_VARIABLE}={environ[ENVIRONMENT_VARIABLE]!r}: use 1 or 0")


class Levers:
    """
    Which speed levers this process runs with.

    @ivar on: whether the levers are on at all.
    @ivar why: why they are off (C{""} when on).
    @ivar active: the names (L{NAMES}) of the levers turned on so far.
    """

    _current: Optional["Levers"] = None

    def __init__(self, on: bool, why: str = "") -> None:
        self.on = on
        self.why = why
        self.active: List[str] = []

    def __repr__(self) -> str:
        return f"<Levers on={self.on} active={self.active}>"

    @classmethod
    def choose(
        cls,
        noLevers: bool = False,
        environ: Optional[Mapping[str, str]] = None,
        versions: Optional[Mapping[str, str]] = None,
    ) -> "Levers":
        """
        Decide for this process: off with C{noLevers} or
        C{WSGLUE_NO_LEVERS=1}; off, with one warning line, outside the
        tested versions; on otherwise.  The choice is kept as
        L{current}.

        @raise ValueError: for a C{WSGLUE_NO_LEVERS} that is neither on nor off.
        """
        if environ is None:
            environ = os.environ
        if noLevers or offInEnvironment(environ):
            levers = cls(False, "turned off (--no-levers or WSGLUE_NO_LEVERS)")
            _log.info("speed levers off: the plain path, Autobahn's and Twisted's public API only")
        else:
            problem = versionProblem(versions)
            if problem is None:
                levers = cls(True)
            else:
                levers = cls(False, problem)
                _log.warn("speed levers off: {problem}; wsglue runs the plain path", problem=problem)
        Levers._current = levers
        return levers

    @classmethod
    def current(cls) -> "Levers":
        """
        The choice this process made (L{choose}); if it made none yet, the
        one the environment and the installed versions give.
        """
        if cls._current is None:
            cls.choose()
        assert cls._current is not None
        return cls._current

    # -- turning them on ------------------------------------------------------

    def _turnOn(self, name: str, precondition: Callable[[], Optional[str]], action: Callable[[], Any]) -> bool:
        """
        Turn lever C{name} on with C{action} if the levers are on and
        C{precondition} (a check of what the lever relies on) finds nothing
        wrong; otherwise leave it off, with one warning line for a failed
        check.
        """
        if not self.on:
            return False
        problem = precondition()
        if problem is not None:
            _log.warn("speed lever {name} off: {problem}", name=name, problem=problem)
            return False
        action()
        if name not in self.active:
            self.active.append(name)
        return True

    def installProcessLevers(self, twistdOptions: Any = None) -> None:
        """
        The levers that must be in place before twistd builds the service:
        wsglue's reactor (unless a reactor is installed already) and, under
        twistd (C{twistdOptions}, twistd's own options), wsglue's log
        observer (unless C{--logger} or C{--syslog} chose another).
        """
        from wsglue.levers import logs, reactor

        self._turnOn("reactor", reactor.precondition, reactor.installIfUnchosen)
        if twistdOptions is not None:
            self._turnOn("log-observer", logs.precondition, lambda: logs.chooseTwistdLogger(twistdOptions))

    def apply(
        self,
        factory: Any = None,
        site: Any = None,
        listener: Any = None,
        registry: Any = None,
        top: Any = None,
        ownProcess: bool = False,
    ) -> None:
        """
        Turn the service levers on for the parts given: the WebSocket
        C{factory}, the C{site} of the one-port front, the C{listener}
        (L{wsglue.process.service.WebSocketService}), a cluster
        C{registry}, and, for a process of its own (C{ownProcess}: twistd),
        the collector tuning as a service of C{top}.
        """
        from wsglue.levers import collector, fastwrite, front, masking, protocol, timer

        self._turnOn("debug-arguments", protocol.precondition, protocol.deferDebugArguments)
        self._turnOn("masking", masking.precondition, masking.install)
        if factory is not None:
            self._turnOn("connection", protocol.precondition, lambda: protocol.leverFactory(factory))
            self._turnOn("timer", timer.precondition, lambda: timer.install(factory))
        if site is not None and "connection" in self.active:
            # The front hands first requests to the connection lever's protocol.
            self._turnOn("front", front.precondition, lambda: front.leverSite(site))
        if listener is not None or registry is not None:

            def immediate() -> None:
                if listener is not None:
                    listener.onListening.append(fastwrite.useImmediateWrites)
                if registry is not None:
                    fastwrite.publishAtOnce(registry)

            self._turnOn("immediate-writes", fastwrite.precondition, immediate)
        if ownProcess and top is not None:
            self._turnOn(
                "collector",
                collector.precondition,
                lambda: collector.CollectorTuning().setServiceParent(top),
            )


def missingAttributes(owner: Any, names: Iterable[str]) -> Optional[str]:
    """
    For a lever's precondition: which of C{names} C{owner} lacks, said in
    one phrase, or C{None} if it has them all.
    """
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        label = getattr(owner, "__qualname__", getattr(owner, "__name__", repr(owner)))
        return f"{label} has no {', '.join(missing)}"
    return None


__all__ = ["ENVIRONMENT_VARIABLE", "Levers", "NAMES", "TESTED", "versionProblem"]
