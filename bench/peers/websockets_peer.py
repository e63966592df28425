"""
The Python C{websockets} peer of the wsglue bench: the same protocol as
C{twistd wsglue --handler bench.handler:Bench} on the asyncio C{websockets}
package, for a side-by-side comparison.

WebSocket at C{/}; a session cookie on the handshake (C{Set-Cookie} with a
fresh id when the request carries no valid one); text C{ping} is answered
C{pong}, C{broadcast <payload>} sends C{<payload>} to every open
connection, anything else is answered C{ok}.

Usage: C{python bench/peers/websockets_peer.py PORT [HOST]}
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
from http.cookies import CookieError, SimpleCookie
from typing import Any, Optional

from websockets.asyncio.server import ServerConnection, broadcast, serve

COOKIE = "CookieName"
_SID = re.compile(r"^[0-9a-f]{40}$")


def sessionFrom(header: Optional[str]) -> Optional[str]:
    """
    The session id in a C{Cookie} header, or C{None}.
    """
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    if morsel is not None and _SID.match(morsel.value):
        return morsel.value
    return None


async def main(port: int, host: str) -> None:
    connections: set = set()

    def processRequest(connection: ServerConnection, request: Any) -> None:
        sid = sessionFrom(request.headers.get("Cookie"))
        connection.newSession = sid is None  # type: ignore[attr-defined]
        connection.sid = sid or secrets.token_hex(20)  # type: ignore[attr-defined]
        return None

    def processResponse(connection: ServerConnection, request: Any, response: Any) -> Any:
        if response.status_code == 101 and connection.newSession:  # type: ignore[attr-defined]
            response.headers["Set-Cookie"] = f"{COOKIE}={connection.sid}; Path=/; HttpOnly; SameSite=Lax"  # type: ignore[attr-defined]
        return response

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    await ws.close(1003, "binary messages are not supported")
                    return
                if message == "ping":
                    await ws.send("pong")
                elif message.startswith("broadcast "):
                    broadcast(connections, message[10:])
                else:
                    await ws.send("ok")
        finally:
            connections.discard(ws)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        process_request=processRequest,
        process_response=processResponse,
        ping_interval=None,
        compression=None,
        backlog=4096,
    ):
        sys.stdout.write(f"listening on ws://{host}:{port}/\n")
        sys.stdout.flush()
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
