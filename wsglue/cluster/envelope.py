"""
The envelope of what one cluster node publishes for the others: the
operation (send, broadcast, close), the kind of payload, the publishing
node's id, then the payload.
"""

from __future__ import annotations

import secrets
import struct
from typing import NamedTuple, Optional

from wsglue.registry import Message

MAGIC = b"W1"
OP_SEND = b"s"
OP_BROADCAST = b"b"
OP_CLOSE = b"c"
# A send or broadcast numbered in its Redis-kept stream: the body starts
# with the offset and the epoch (see wsglue.cluster.streams).
OP_SEND_STREAM = b"S"
OP_BROADCAST_STREAM = b"B"
_OPS = (OP_SEND, OP_BROADCAST, OP_CLOSE, OP_SEND_STREAM, OP_BROADCAST_STREAM)
_NUMBERED = (OP_SEND_STREAM, OP_BROADCAST_STREAM)
KIND_TEXT = b"t"
KIND_BINARY = b"b"
KIND_NONE = b"-"
NODE_ID_LENGTH = 16
_HEADER = len(MAGIC) + 2 + NODE_ID_LENGTH


class Envelope(NamedTuple):
    """
    A decoded message from another node.
    """

    op: bytes
    origin: str
    message: Optional[Message] = None
    code: int = 1000
    reason: str = ""
    offset: int = 0
    epoch: str = ""


def newNodeId() -> str:
    """
    A random id for this process, unique in the cluster.
    """
    return secrets.token_hex(NODE_ID_LENGTH // 2)


def head(op: bytes, origin: str, message: Message) -> bytes:
    """
    The start of an envelope for C{message}, before its body: what the
    Redis scripts prefix to the offset, the epoch and the payload.
    """
    kind = KIND_TEXT if isinstance(message, str) else KIND_BINARY
    return MAGIC + op + kind + origin.encode("ascii")


def encode(op: bytes, origin: str, message: Optional[Message] = None, code: int = 1000, reason: str = "") -> bytes:
    """
    Encode what a node publishes: C{MAGIC, op, kind, origin node id}, then
    the payload.  Text goes as UTF-8 and binary as is (Redis strings are
    binary safe), the kind byte telling them apart; a close carries its code
    on two bytes and the reason in UTF-8.
    """
    if op not in _OPS or len(origin) != NODE_ID_LENGTH:
        raise ValueError(f"bad op {op!r} or origin {origin!r}")
    head = MAGIC + op
    if op == OP_CLOSE:
        return head + KIND_NONE + origin.encode("ascii") + struct.pack("!H", code) + reason.encode("utf-8")
    if isinstance(message, str):
        return head + KIND_TEXT + origin.encode("ascii") + message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return head + KIND_BINARY + origin.encode("ascii") + bytes(message)
    raise TypeError(f"can only send str or bytes, not {type(message).__name__}")


def decode(data: bytes) -> Envelope:
    """
    The inverse of L{encode}.

    @raise ValueError: if C{data} is not an envelope.
    """
    if not isinstance(data, bytes) or len(data) < _HEADER or not data.startswith(MAGIC):
        raise ValueError("not a wsglue envelope")
    op = data[2:3]
    kind = data[3:4]
    try:
        origin = data[4:_HEADER].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("bad origin")
    body = data[_HEADER:]
    if op == OP_CLOSE:
        if len(body) < 2:
            raise ValueError("close without a code")
        (code,) = struct.unpack("!H", body[:2])
        return Envelope(op, origin, None, code, body[2:].decode("utf-8", "replace"))
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}")
    offset, epoch = 0, ""
    if op in _NUMBERED:
        parts = body.split(b" ", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError("numbered envelope without an offset")
        offset, epoch, body = int(parts[0]), parts[1].decode("ascii", "replace"), parts[2]
    if kind == KIND_TEXT:
        return Envelope(op, origin, body.decode("utf-8"), offset=offset, epoch=epoch)
    if kind == KIND_BINARY:
        return Envelope(op, origin, body, offset=offset, epoch=epoch)
    raise ValueError(f"unknown kind {kind!r}")
