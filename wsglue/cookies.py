"""
Session cookies: reading the session id out of a C{Cookie} header and issuing
new ones.

The L{SessionCookies} store is owned by the WebSocket factory; protocols only
call it (the shape of Crossbar.io's cookie store).  Ids are 20 random bytes
from the OS CSPRNG, as 40 lowercase hex characters.  With signing keys the
cookie value is C{<id>.<HMAC-SHA256 of the id, hex>}: the first key signs,
every key verifies, so keys can be rotated without logging anyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from http.cookies import CookieError, Morsel, SimpleCookie
from typing import Optional, Sequence, Tuple

_ID = re.compile(r"[0-9a-f]{40}\Z")
_PAIRS = re.compile(r"[;,]")
_SIGNATURE_HEX = 64

# A real cookie value is at most 40 + 1 + 64 characters; anything much larger
# is hostile or broken and is not worth parsing.
MAX_COOKIE_HEADER = 8192


def newSessionId() -> str:
    """
    A fresh session id: 20 bytes from the OS CSPRNG, as lowercase hex.
    """
    return secrets.token_hex(20)


def shortId(sid: str) -> str:
    """
    What logs may show of a session id (it is a bearer secret).
    """
    return sid[:8]


# Names SimpleCookie reads as attributes of the cookie before them, never as
# a cookie of their own (Morsel._reserved; compared in lower case).
RESERVED_NAMES = frozenset(
    ("expires", "path", "comment", "domain", "max-age", "secure", "httponly", "version", "samesite")
)


def _sentValue(morsel: Morsel) -> str:
    """
    A cookie's value as the browser sent it, without the double quotes
    RFC 6265 allows around it.  (L{SimpleCookie}'s C{value} also decodes
    backslash escapes inside the quotes, which RFC 6265 does not allow in
    a cookie value: C{"\\141..."} must not name session C{a...}.)
    """
    sent: str = morsel.coded_value
    if len(sent) >= 2 and sent[0] == sent[-1] == '"':
        return sent[1:-1]
    return sent


def _cookieValues(header: str, name: str) -> list:
    """
    The values of cookie C{name} in a C{Cookie} header, parsed by
    L{SimpleCookie}.

    L{SimpleCookie} stops at the first pair it cannot parse, so a header it
    does not take whole is read again pair by pair: one broken cookie of
    another application must not hide ours.  A request with several
    C{Cookie} headers reaches us as one, joined with C{", "}; since RFC 6265
    allows no comma in a cookie value, pairs are split at commas too.
    """
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        pass
    # With repeated names SimpleCookie keeps only the last value, which may
    # be a stale or foreign one hiding our well-formed cookie: read every
    # pair then.
    if name in jar and header.count(name) == 1 and "," not in header:
        return [_sentValue(jar[name])]
    values = []
    for pair in _PAIRS.split(header):
        if name not in pair:
            continue
        one = SimpleCookie()
        try:
            one.load(pair.strip())
        except CookieError:
            continue
        if name in one:
            values.append(_sentValue(one[name]))
    return values


class SessionCookies:
    """
    Parse and issue the session cookie.

    @ivar name: the cookie's name.
    """

    def __init__(self, name: str = "CookieName", keys: Sequence[bytes] = ()) -> None:
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"{name!r} is the name of a cookie attribute and cannot name the session cookie")
        self.name = name
        self._keys = list(keys)

    @property
    def signed(self) -> bool:
        """
        Whether cookie values carry a signature.
        """
        return bool(self._keys)

    def _sign(self, sid: str, key: bytes) -> str:
        return hmac.new(key, sid.encode("ascii"), hashlib.sha256).hexdigest()

    def sessionFromValue(self, value: str) -> Optional[str]:
        """
        The session id that the cookie value C{value} names, or C{None} if it
        is malformed (or, when signing, not signed by one of our keys).
        """
        if not self._keys:
            return value if _ID.match(value) else None
        sid, dot, signature = value.partition(".")
        if not (dot and _ID.match(sid) and len(signature) == _SIGNATURE_HEX):
            return None
        good = False
        for key in self._keys:
            # Check every key, so the time taken does not say which matched.
            good |= hmac.compare_digest(self._sign(sid, key), signature)
        return sid if good else None

    def sessionFromHeader(self, header: Optional[str]) -> Optional[str]:
        """
        The session id named by a request's C{Cookie} header, or C{None} if
        there is no well-formed session cookie in it.
        """
        if not header or len(header) > MAX_COOKIE_HEADER:
            return None
        for value in _cookieValues(header, self.name):
            sid = self.sessionFromValue(value)
            if sid is not None:
                return sid
        return None

    def valueFor(self, sid: str) -> str:
        """
        The cookie value that names C{sid}.
        """
        if not self._keys:
            return sid
        return sid + "." + self._sign(sid, self._keys[0])

    def issue(self) -> Tuple[str, str]:
        """
        A new session.

        @return: its id and the cookie value naming it.
        """
        sid = newSessionId()
        return sid, self.valueFor(sid)

    def setCookieHeader(self, value: str, secure: bool) -> str:
        """
        The C{Set-Cookie} header value that stores C{value}.
        """
        header = f"{self.name}={value}; Path=/; HttpOnly; SameSite=Lax"
        if secure:
            header += "; Secure"
        return header
