"""
The wsglue handler of the bench: the default ping/pong protocol plus a
broadcast trigger, so that the load generator can start a fan-out.

Text C{ping} is answered C{pong}; C{broadcast <payload>} sends C{<payload>}
to every connection with C{registry.broadcast}; any other text is answered
C{ok}.  Run it with C{twistd -n wsglue --handler bench.handler:Bench}.
"""

from __future__ import annotations

from typing import Any, Optional

from wsglue.handlers import PingPong
from wsglue.registry import Message

_TRIGGER = "broadcast "


class Bench(PingPong):
    """
    The default handler, plus C{broadcast <payload>}.
    """

    def received(self, sid: str, conn: Any, message: Message) -> Optional[str]:
        if isinstance(message, str) and message.startswith(_TRIGGER):
            self.registry.broadcast(message[len(_TRIGGER) :])
            return None
        return PingPong.received(self, sid, conn, message)
