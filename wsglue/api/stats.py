"""
C{GET /api/stats}: the numbers the admin page plots, now: connections,
sessions, and the message totals (the page takes rates from two readings).
With C{--workers}, summed over the workers, as C{/metrics} is.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from wsglue.counters import Counters
from wsglue.registry import SessionRegistry

Others = Callable[[], List[Dict[str, Any]]]


def statsOf(
    counters: Counters,
    registry: SessionRegistry,
    others: Optional[Others] = None,
    clock: Callable[[], float] = time.time,
) -> Dict[str, Any]:
    """
    The numbers of this process (and of the other workers, with C{others}).
    """
    connections = registry.connectionCount
    sessions = len(registry)
    received = counters["messages_received"]
    sent = counters["messages_sent"]
    for other in others() if others is not None else ():
        connections += int(other.get("connections", 0))
        sessions += int(other.get("sessions", 0))
        theirs = other.get("counters", {})
        received += int(theirs.get("messages_received", 0))
        sent += int(theirs.get("messages_sent", 0))
    return {
        "connections": connections,
        "sessions": sessions,
        "messages_received": received,
        "messages_sent": sent,
        "time": round(clock(), 3),
    }
