"""
The C{--redis} URL: C{redis://[[user]:password@]host[:port][/db]}, or
C{rediss://} for Redis over TLS (the server certificate is verified against
the system's trust store and the host name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit


class BadRedisURL(ValueError):
    """
    The URL cannot name a Redis server; the message says why.
    """


@dataclass(frozen=True)
class RedisURL:
    """
    Where the Redis server is and how to log in.
    """

    host: str
    port: int = 6379
    db: int = 0
    password: Optional[str] = None
    username: Optional[str] = None
    tls: bool = False

    def __str__(self) -> str:
        # Fit for logs: never the password.
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = "***@" if self.password else ""
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


def parseRedisURL(url: str) -> RedisURL:
    """
    Parse C{url}.

    @raise BadRedisURL: with a message fit for a user.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise BadRedisURL(str(e))
    if parts.scheme not in ("redis", "rediss"):
        raise BadRedisURL("use redis://host:port/db or rediss://host:port/db")
    if not parts.hostname:
        raise BadRedisURL("no host")
    if port == 0:
        raise BadRedisURL("port 0")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise BadRedisURL(f"the database must be a number, not {path!r}")
    if parts.query or parts.fragment:
        raise BadRedisURL("no query or fragment is understood")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    return RedisURL(
        host=parts.hostname,
        port=port or 6379,
        db=int(path) if path else 0,
        password=password or None,
        username=username,
        tls=parts.scheme == "rediss",
    )
