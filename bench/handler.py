"""
The wsglue handler of the bench: the default ping/pong protocol plus a
broadcast trigger, so that the load generator can start a fan-out.

Text C{ping} is answered C{pong}; C{broadcast <payload>} sends C{<payload>}
to every connection with C{registry.broadcast}; any other text is answered
C{ok}.  Run it with C{twistd -n wsglue --handler bench.handler:Bench}.
"""

from __future__ import annotations

from typing import Any, Optional

from wsglue.registry import Message, SessionRegistry


class Bench:
    """
    ping/pong/ok, and C{broadcast <payload>}.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if isinstance(message, bytes):
            conn.close(1003, "binary messages are not supported")
            return None
        if message == "ping":
            return "pong"
        if message.startswith("broadcast "):
            self.registry.broadcast(message[10:])
            return None
        return "ok"
