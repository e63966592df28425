"""
Unmasking small client frames without a native call per frame.

Autobahn 26 builds a new XOR masker for every masked frame and, when its
NVX extension is built, that masker is a cffi object: an import, two
allocations and a finaliser per frame.  For the small messages a gateway
mostly carries that costs more than the XOR itself (about 3 µs of a 10 µs
frame on CPython 3.11, a third of the echo throughput).  L{SmallMasker}
does the XOR of a small payload as one big-integer operation;
L{createXorMasker} uses it below L{SMALL} bytes and Autobahn's own masker
(NVX's SIMD code) for larger frames, where that wins.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.websocket.xormasker import create_xor_masker as _autobahnMasker

# Where the two cost the same, measured on this project's machine: about
# 1 KiB.  Below it the big-integer XOR wins (4 B: 0.6 µs against 2.5 µs).
SMALL = 512


class SmallMasker:
    """
    Autobahn's masker interface (C{pointer}, C{reset}, C{process}) for a
    4-byte mask, processing data in one or more pieces.
    """

    __slots__ = ("_ptr", "_mask")

    def __init__(self, mask: bytes) -> None:
        self._ptr = 0
        self._mask = bytes(mask)

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        if not n:
            return b""
        mask = self._mask
        offset = self._ptr & 3
        if offset:
            mask = mask[offset:] + mask[:offset]
        self._ptr += n
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def createXorMasker(mask: bytes, length: Optional[int] = None) -> Any:
    """
    Autobahn's C{create_xor_masker}, with L{SmallMasker} for frames shorter
    than L{SMALL} bytes.
    """
    if length is not None and length < SMALL:
        return SmallMasker(mask)
    return _autobahnMasker(mask, length)


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: it replaces the
    C{create_xor_masker} that Autobahn's protocol module calls per frame.
    """
    import autobahn.websocket.protocol as autobahnProtocol

    from wsglue.levers import missingAttributes

    return missingAttributes(autobahnProtocol, ("create_xor_masker",))


def install() -> None:
    """
    Make Autobahn's frame parser unmask with L{createXorMasker}.
    """
    import autobahn.websocket.protocol as autobahnProtocol

    autobahnProtocol.create_xor_masker = createXorMasker
