"""
The Origin check of the WebSocket handshake.

By default only the page's own origin may open a WebSocket: the C{Origin}
header must name the scheme, host and port the browser reached us at (the
C{Host} header).  C{--allowed-origin} patterns replace that default; they are
Autobahn's C{allowedOrigins} wildcards (C{*} matches anything).  A client that
sends no C{Origin} (not a browser) is not subject to the check.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple
from urllib.parse import urlsplit

from autobahn.util import wildcards2patterns

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _hostPort(netloc: str, scheme: str) -> Optional[Tuple[str, int]]:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    return parts.hostname.lower(), port


class OriginPolicy:
    """
    Decide whether a browser C{Origin} may open a WebSocket.

    @param patterns: C{--allowed-origin} wildcards; empty means same origin.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = list(patterns)
        self._compiled = wildcards2patterns(self.patterns)

    def allows(self, origin: Optional[str], host: str, secure: bool) -> bool:
        """
        Whether a handshake with header C{Origin: origin}, sent to C{Host:
        host} over a connection that is TLS when C{secure}, is allowed.
        """
        if not origin:
            return True
        origin = origin.strip()
        if self._compiled:
            return self._matchesPattern(origin)
        try:
            parts = urlsplit(origin)
        except ValueError:
            # Not a URL (e.g. "http://[::1"): a refusal, not a failed handshake.
            return False
        scheme = parts.scheme.lower()
        if scheme != ("https" if secure else "http"):
            return False
        theirs = _hostPort(parts.netloc, scheme)
        return theirs is not None and theirs == _hostPort(host, scheme)

    def _matchesPattern(self, origin: str) -> bool:
        # Patterns are matched against the origin as the browser sent it and
        # with its port spelled out, so both "https://*.example.com" and
        # "http://localhost:*" mean what they say.
        candidates = [origin.rstrip("/")]
        try:
            parts = urlsplit(origin)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            return False
        if parts.hostname and port:
            candidates.append(f"{parts.scheme.lower()}://{parts.hostname}:{port}")
        return any(p.match(c) for p in self._compiled for c in candidates)
