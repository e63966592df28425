"""
The HTTP layer of the API: a request whose body is bounded (L{ApiRequest})
and a channel with an absolute deadline per request (L{ApiChannel}).

twisted.web reads a whole body before a resource sees the request; the
bound must therefore be applied while the body arrives: from the
C{Content-Length} before a byte of the body is read, and by counting the
bytes of a chunked body.  An oversized request is answered 413 at once and
the rest of what the peer sends is read and dropped until it closes or the
deadline passes (closing with unread data would reset the connection, and
the peer might never see the answer).
"""

from __future__ import annotations

import io
import json
from typing import Any, Optional

from twisted.web.server import Request

from wsglue.web.front import DeadlineChannel

# How long a request (headers and body) may take to arrive, when the site
# does not say: a peer that trickles its body cannot hold a connection.
REQUEST_DEADLINE = 10.0


def errorBody(message: str) -> bytes:
    """
    The JSON body of an error answer: C{{"error": message}}.
    """
    return json.dumps({"error": message}).encode("utf-8")


class ApiChannel(DeadlineChannel):
    """
    An HTTP channel whose requests must arrive whole within the site's
    C{handshakeTimeout} seconds (L{DeadlineChannel}), and which ignores
    what a peer sends once one of its requests was refused for its size.
    """

    refusing = False

    def dataReceived(self, data: bytes) -> None:
        if self.refusing:
            return
        DeadlineChannel.dataReceived(self, data)


class ApiRequest(Request):
    """
    A request whose body may be at most C{site.maxBodySize} bytes; over it,
    the answer is 413 before the body is read (L{refuse}).
    """

    bodySize = 0
    refused = False

    def _limit(self) -> int:
        channel: Any = self.channel
        return int(getattr(channel.site, "maxBodySize", 0) or 0)

    def gotLength(self, length: Optional[int]) -> None:
        limit = self._limit()
        if length is not None and limit and length > limit:
            self.content = io.BytesIO()
            self.refuse(f"the body is {length} bytes, more than the {limit} allowed")
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.bodySize += len(data)
        limit = self._limit()
        if limit and self.bodySize > limit:
            self.refuse(f"the body is more than the {limit} bytes allowed")
            return
        Request.handleContentChunk(self, data)

    def refuse(self, why: str) -> None:
        """
        Answer 413 now, before the request is complete, and read nothing
        more from this peer: the answer is written raw, since twisted.web's
        response machinery needs a complete request.  The write side is
        closed (the peer sees the answer, then the end); the connection is
        dropped when the peer closes it or at the request deadline.
        """
        self.refused = True
        channel: Any = self.channel
        channel.refusing = True
        body = errorBody(why)
        head = (
            "HTTP/1.1 413 Content Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        transport: Any = channel.transport
        if transport is None:
            return
        transport.write(head + body)
        site: Any = channel.site
        counted = getattr(site, "countRefused", None)
        if counted is not None:
            counted(getattr(channel, "_path", None), 413)
        halfClose = getattr(transport, "loseWriteConnection", None)
        if halfClose is not None:
            halfClose()
        else:
            transport.loseConnection()

    def process(self) -> None:
        if self.refused:
            return
        Request.process(self)
