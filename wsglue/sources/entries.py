"""
What an entry of a source asks for: L{readEntry} turns its fields into a
L{Delivery} (a session or the broadcast, and a text or binary message) or
says, in a L{DeadEntry}, why it cannot be delivered as written.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

from wsglue.registry import Message

SID = re.compile(rb"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Delivery:
    """
    Send C{message} to session C{sid}, or to everyone when C{sid} is None.
    """

    sid: Optional[str]
    message: Message


@dataclass(frozen=True)
class DeadEntry:
    """
    An entry that cannot be delivered as written, and why.
    """

    reason: str


def fieldsOf(flat: Sequence[bytes]) -> Dict[bytes, bytes]:
    """
    The fields of an entry as Redis gives them (C{[name, value, ...]}); a
    name given twice keeps its last value.
    """
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def readEntry(fields: Dict[bytes, bytes], maxMessageSize: int = 0) -> Union[Delivery, DeadEntry]:
    """
    What the entry with C{fields} asks for: C{session} (40 lowercase hex)
    or C{broadcast} (any value), and C{data} (UTF-8 text) or C{data_b64}
    (standard base64 of the bytes).

    @param maxMessageSize: the most bytes of a message; 0 for no bound.
    """
    hasSession, hasBroadcast = b"session" in fields, b"broadcast" in fields
    if hasSession and hasBroadcast:
        return DeadEntry("both session and broadcast")
    if not hasSession and not hasBroadcast:
        return DeadEntry("no session or broadcast")
    sid: Optional[str] = None
    if hasSession:
        if not SID.match(fields[b"session"]):
            return DeadEntry("session is not 40 lowercase hex characters")
        sid = fields[b"session"].decode("ascii")
    hasText, hasBinary = b"data" in fields, b"data_b64" in fields
    if hasText and hasBinary:
        return DeadEntry("both data and data_b64")
    if not hasText and not hasBinary:
        return DeadEntry("no data or data_b64")
    message: Message
    if hasText:
        try:
            message = fields[b"data"].decode("utf-8")
        except UnicodeDecodeError:
            return DeadEntry("data is not valid UTF-8 (send bytes as data_b64)")
        size = len(fields[b"data"])
    else:
        try:
            message = base64.b64decode(fields[b"data_b64"], validate=True)
        except (binascii.Error, ValueError):
            return DeadEntry("data_b64 is not valid base64")
        size = len(message)
    if maxMessageSize and size > maxMessageSize:
        return DeadEntry(f"the message is more than {maxMessageSize} bytes")
    return Delivery(sid, message)
