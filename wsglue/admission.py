"""
Who may open a WebSocket: proxy trust, the Origin policy, the connection
limits and the session cookie, decided once per opening handshake.

L{Admission} is owned by the WebSocket factory; the protocol hands it the
handshake's headers from C{onConnect} and gets back the session id and the
headers to add to the 101 response, or a L{ConnectionDeny} with the HTTP
status that refuses the handshake.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from wsglue.cookies import SessionCookies
from wsglue.limits import Limits
from wsglue.origin import OriginPolicy

_log = Logger()


class Admitted(NamedTuple):
    """
    A handshake let in: its session, the client address it counts against
    (release it with L{Limits.release} when the connection goes), and the
    headers to add to the 101 response (C{Set-Cookie} for a new session).
    """

    sid: str
    address: str
    headers: Dict[str, str]


class Admission:
    """
    The rules a handshake must pass, in order: the Origin policy, the
    per-address and whole-daemon limits, then the session cookie (read, or
    a new session issued).

    @ivar trustProxy: whether C{X-Forwarded-Proto} and C{X-Forwarded-For}
        come from a reverse proxy of ours and are believed.
    """

    def __init__(
        self,
        cookies: SessionCookies,
        origins: OriginPolicy,
        limits: Limits,
        trustProxy: bool = False,
    ) -> None:
        self.cookies = cookies
        self.origins = origins
        self.limits = limits
        self.trustProxy = trustProxy

    def admit(self, transport: Any, headers: Dict[str, str], origin: str) -> Admitted:
        """
        Admit the handshake with these C{headers} (names in lower case) and
        C{origin} that arrived on C{transport}.

        @raise ConnectionDeny: 403 for an Origin not allowed; 503 or 429
            from the limits.
        """
        secure = self.isSecureRequest(transport, headers)
        if not self.origins.allows(origin, headers.get("host", ""), secure):
            _log.info("origin refused: {origin}", origin=origin)
            self.limits.counters.add("handshakes:refused")
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        address = self.clientAddress(transport, headers)
        refusal = self.limits.admit(address)
        if refusal is not None:
            self.limits.counters.add("handshakes:refused")
            raise ConnectionDeny(*refusal)
        cookies = self.cookies
        header = headers.get("cookie")
        sid = cookies.sessionFromHeader(header)
        response: Dict[str, str] = {}
        if sid is None:
            if cookies.signed and header and cookies.name in header:
                # A cookie of our name that we did not sign: forged, or
                # signed with a key this deployment no longer holds.
                self.limits.bite("refused_cookie")
            sid, value = cookies.issue()
            response["Set-Cookie"] = cookies.setCookieHeader(value, secure)
        self.limits.counters.add("handshakes:accepted")
        return Admitted(sid, address, response)

    def isSecureRequest(self, transport: Any, headers: Dict[str, str]) -> bool:
        """
        Whether the browser reached us over TLS: the connection is TLS, or a
        trusted proxy says so in C{X-Forwarded-Proto}.
        """
        if ISSLTransport.providedBy(transport):
            return True
        if self.trustProxy:
            proto = headers.get("x-forwarded-proto", "")
            return proto.rsplit(",", 1)[-1].strip().lower() == "https"
        return False

    def clientAddress(self, transport: Any, headers: Dict[str, str]) -> str:
        """
        The client's IP address, for the per-address limit: the peer of the
        connection, or, behind a trusted proxy, the rightmost entry of
        C{X-Forwarded-For} (the one our proxy added; entries to its left
        come from the client and can be forged).
        """
        if self.trustProxy:
            forwarded = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return self.peerHost(transport)

    # How the client's host is read off a transport; the handshake lever
    # reads a TCP transport's own tuple instead of building an address.
    peerHost = staticmethod(lambda transport: transportPeerHost(transport))


def transportPeerHost(transport: Optional[Any]) -> str:
    """
    The host of C{transport}'s peer (C{"local"} for a UNIX socket or when
    there is no transport).
    """
    if transport is None:
        return "local"
    peer = transport.getPeer()
    return str(getattr(peer, "host", None) or "local")
