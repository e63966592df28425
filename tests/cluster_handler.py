"""
A handler for the cluster tests, loaded by daemons with
C{--handler tests.cluster_handler:Commands}: a client drives the registry of
the node it is connected to with text commands, and learns which process
serves it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.internet.defer import Deferred


class Commands:
    """
    C{ping} → C{pong}; C{pid} → C{pid <pid>};
    C{send <sid> <text>} → C{sent <n>}; C{sendbin <sid> <hex>} → C{sent <n>};
    C{broadcast <text>} → C{broadcast <n>}; C{close <sid>} → C{closing <n>};
    C{has <sid>} → C{has True|False|error}; C{everywhere} → C{everywhere
    sid,sid,…}; C{counters} → C{counters <json>}.
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def received(self, sid: str, conn: Any, message: Any) -> Optional[Any]:
        if isinstance(message, bytes):
            return message
        verb, _, rest = message.partition(" ")
        registry = self.registry
        if verb == "ping":
            return "pong"
        if verb == "pid":
            return f"pid {os.getpid()}"
        if verb == "send":
            target, _, text = rest.partition(" ")
            return f"sent {registry.send(target, text)}"
        if verb == "sendbin":
            target, _, hexed = rest.partition(" ")
            return f"sent {registry.send(target, bytes.fromhex(hexed))}"
        if verb == "broadcast":
            return f"broadcast {registry.broadcast(rest)}"
        if verb == "close":
            return f"closing {registry.close(rest, 4001, 'closed by test')}"
        if verb == "has":
            d: Deferred = registry.hasSession(rest)
            d.addCallbacks(lambda yes: f"has {yes}", lambda f: "has error")
            return d
        if verb == "everywhere":
            d = registry.sessionsEverywhere()
            d.addCallbacks(lambda sids: "everywhere " + ",".join(sids), lambda f: "everywhere error")
            return d
        if verb == "counters":
            return "counters " + json.dumps(getattr(registry, "counters", {}), sort_keys=True)
        return "ok"
