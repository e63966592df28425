"""
With C{--workers N}: one scrape of C{/metrics} covers every worker.

Whichever worker accepts a scrape answers it, so each worker leaves its
counters and gauges in a folder that the parent made (L{SharedCounters},
rewritten every L{INTERVAL} seconds), and the one that answers adds the
others' latest to its own live numbers.  A worker that dies takes its
counts with it: the parent removes its file (L{forget}), and Prometheus
sees the totals drop as a counter reset.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from twisted.internet.task import LoopingCall

from wsglue.counters import Counters
from wsglue.registry import SessionRegistry

# How often a worker leaves its numbers for the others, in seconds: the
# other workers' part of a scrape is at most this old.
INTERVAL = 1.0


def forget(folder: str, pid: Optional[int]) -> None:
    """
    Remove the numbers the worker C{pid} left in C{folder}.
    """
    try:
        os.remove(os.path.join(folder, f"{pid}.json"))
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedCounters:
    """
    This worker's numbers, written to C{folder} for the other workers, and
    theirs read back.
    """

    def __init__(self, folder: str, counters: Counters, registry: SessionRegistry, pid: Optional[int] = None) -> None:
        self.folder = folder
        self.counters = counters
        self.registry = registry
        self.pid = os.getpid() if pid is None else pid
        self.path = os.path.join(folder, f"{self.pid}.json")

    def write(self) -> None:
        """
        Leave this worker's numbers (atomically: a reader never sees half).
        """
        data = {
            "counters": dict(self.counters),
            "connections": self.registry.connectionCount,
            "sessions": len(self.registry),
        }
        temporary = self.path + ".tmp"
        try:
            with open(temporary, "w") as f:
                json.dump(data, f)
            os.replace(temporary, self.path)
        except OSError:
            pass  # the parent removed the folder: it is stopping

    def others(self) -> List[Dict[str, Any]]:
        """
        The latest numbers of the other live workers.
        """
        found: List[Dict[str, Any]] = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return found
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext != "json" or not stem.isdigit() or int(stem) == self.pid or not _alive(int(stem)):
                continue
            try:
                with open(os.path.join(self.folder, name)) as f:
                    found.append(json.load(f))
            except (OSError, ValueError):
                continue
        return found

    def start(self, clock: Any) -> None:
        """
        Write this worker's numbers now and every L{INTERVAL} seconds.
        """
        self._loop = LoopingCall(self.write)
        self._loop.clock = clock
        self._loop.start(INTERVAL, now=True)

    def stop(self) -> None:
        """
        Stop writing, and remove what was written.
        """
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.running:
            loop.stop()
        forget(self.folder, self.pid)
