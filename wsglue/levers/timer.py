"""
The exact protocol timer: Autobahn's opening-handshake, closing-handshake
and auto-ping timers on the factory's reactor, at the times asked for.
"""

from __future__ import annotations

from typing import Any, Optional


class _Timer:
    """
    A timer of L{_ExactTimer}: cancelling it after it fired is harmless, as
    Autobahn expects of its timers.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()

    def getTime(self) -> float:
        return self._call.getTime()


class _ExactTimer:
    """
    Autobahn's protocol timers (opening and closing handshake, auto-ping) on
    the factory's reactor, at the times asked for.

    Autobahn's default batched timer (txaio) rounds every deadline down to a
    whole second: a C{--ping-timeout} under a second dropped every peer at
    once, and a 1-second one fired anywhere between 0 and 1 second.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> _Timer:
        return _Timer(self._reactor.callLater(delay, func, *args, **kwargs))


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: it replaces the batched timer
    Autobahn's factory keeps as C{_batched_timer}.
    """
    from autobahn.twisted.websocket import WebSocketServerFactory

    if "_batched_timer" not in vars(WebSocketServerFactory(reactor=_NoReactor())):
        return "Autobahn's factory keeps no _batched_timer"
    return None


class _NoReactor:
    """
    Enough of a reactor to build a factory that is never used.
    """

    def callLater(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("not a reactor")


def install(factory: Any) -> None:
    """
    Give C{factory}'s connections exact timers.
    """
    factory._batched_timer = _ExactTimer(factory.reactor)
