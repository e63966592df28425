"""
Commands to Redis encoded in one pass (RESP): the bytes txredisapi's
C{RedisProtocol._build_command} makes, about three times faster.

Every message sent with C{--redis} (and every entry of a stream source)
is one command (C{EVALSHA} of the append script, 16 arguments), and
txredisapi encodes each argument and each length through two generic
conversions: under the ingress benchmark that was a quarter of a worker's
time.  L{fastProtocol} is txredisapi's protocol with this encoder, for
the factories made with C{charset=None} (wsglue's: bytes and text sent as
UTF-8, replies left as bytes).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def encodeCommand(args: Sequence[Any], other: Callable[[Any], bytes]) -> bytes:
    """
    The RESP array of bulk strings of C{args}: C{bytes} as they are, C{str}
    in UTF-8, C{int} in decimal, anything else (and a C{str} that is not
    valid Unicode) as C{other} encodes it.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            try:
                data = arg.encode("utf-8")
            except UnicodeError:
                data = other(arg)
        elif kind is int:
            data = b"%d" % arg
        else:
            data = other(arg)
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def fastProtocol(base: Any) -> Any:
    """
    A subclass of txredisapi's protocol C{base} that encodes commands with
    L{encodeCommand} when its charset is C{None} (as txredisapi would
    then: C{str} with C{str.encode()}), and as C{base} does otherwise.
    """

    class FastCommands(base):  # type: ignore[misc, valid-type]
        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            if self.charset is not None:
                return bytes(base._build_command(self, *args, **kwargs))
            return encodeCommand(args, self._encode_value)

    FastCommands.__name__ = FastCommands.__qualname__ = "Fast" + base.__name__
    return FastCommands


__all__ = ["encodeCommand", "fastProtocol"]
