"""
The collector lever: CPython's cyclic garbage collector set up for a
process that holds many long-lived sessions.
"""

from __future__ import annotations

import gc
from typing import Optional, Tuple

from twisted.application.service import Service


class CollectorTuning(Service):
    """
    CPython's cyclic garbage collector, set up for a process that holds
    many long-lived sessions (started by twistd, before the listener).

    With its defaults the collector walks every object the process holds
    each time that number has grown by a quarter: during a ramp to 10,000
    sessions, three walks of up to 170,000 objects, 60,000 of them the
    modules, classes and functions of Twisted, Autobahn and wsglue, which
    live as long as the process.  That was 5 to 10 % of a process's
    CPU time per handshake.  On start this service collects once, then
    freezes what is left (C{gc.freeze}: never walked again) and collects
    the youngest generation every C{thresholds[0]} new container objects
    instead of every 700, the middle one every C{thresholds[1]} of those
    instead of 10.  Garbage in cycles is still collected; short-lived
    objects (a message, its frame) are freed by reference counting, as
    before.  On an interpreter without these calls (PyPy) it does nothing.
    """

    name = "collector"
    thresholds: Tuple[int, int, int] = (5000, 20, 10)

    def startService(self) -> None:
        Service.startService(self)
        if not (hasattr(gc, "freeze") and hasattr(gc, "set_threshold")):
            return
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.thresholds)


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}.  (On an interpreter without
    C{gc.freeze}, such as PyPy, the service does nothing.)
    """
    return None
