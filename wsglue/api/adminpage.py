"""
C{GET /admin}: the admin page, static files shipped in the package
(C{wsglue/api/admin/}), plain JavaScript fed by the API with a key the user
types in.  The page itself needs no key; everything it shows does.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Dict, Tuple

from twisted.web.resource import Resource

from wsglue.api.http import errorBody
from wsglue.counters import Counters

# name in the URL -> (file, content type)
FILES: Dict[bytes, Tuple[str, bytes]] = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"admin.js": ("admin.js", b"text/javascript; charset=utf-8"),
    b"admin.css": ("admin.css", b"text/css; charset=utf-8"),
}

# Scripts and styles from the page's own files only; the API on the same
# origin; no frames.
POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
    b" frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class AdminResource(Resource):
    """
    C{/admin} (the page) and C{/admin/admin.js}, C{/admin/admin.css}.
    """

    isLeaf = True

    def __init__(self, counters: Counters) -> None:
        Resource.__init__(self)
        self.counters = counters

    def render(self, request: Any) -> bytes:
        name = b"/".join(request.postpath)
        found = FILES.get(name)
        if found is None:
            return self._answer(request, 404, b"application/json", errorBody("no such resource"))
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return self._answer(request, 405, b"application/json", errorBody("method not allowed"))
        body = (files("wsglue.api") / "admin" / found[0]).read_bytes()
        return self._answer(request, 200, found[1], body)

    def _answer(self, request: Any, status: int, kind: bytes, body: bytes) -> bytes:
        self.counters.add(f"api_requests:/admin:{status}")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", kind)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Security-Policy", POLICY)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return body
