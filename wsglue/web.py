"""
The one-port HTTP front: the static page and the WebSocket endpoint.

A request for C{/} that asks for C{Upgrade: websocket} goes to Autobahn's
L{WebSocketResource}; every other request is served from the static folder.
The static folder never lists directories and never serves a path outside
itself (C{..}, encoded variants, symlinks that lead out).
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.python.filepath import FilePath
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import File

_NOT_FOUND = notFound()


class StaticFolder(File):
    """
    A L{File} that serves only what lies inside its root folder and never
    lists a directory.
    """

    childNotFound = _NOT_FOUND

    def __init__(self, path: str, *args: Any, root: str = "", **kwargs: Any) -> None:
        File.__init__(self, path, *args, **kwargs)
        self.root = root or os.path.realpath(path)

    def createSimilarFile(self, path: str) -> "StaticFolder":
        f = File.createSimilarFile(self, path)
        f.root = self.root
        return f

    def directoryListing(self) -> IResource:
        return _NOT_FOUND

    def getChild(self, path: bytes, request: Any) -> IResource:
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_FOUND
        child = File.getChild(self, path, request)
        if isinstance(child, File) and not self._inside(child):
            return _NOT_FOUND
        return child

    def _inside(self, child: FilePath) -> bool:
        real = os.path.realpath(child.path)
        return real == self.root or real.startswith(self.root + os.sep)


def _isUpgrade(request: Any) -> bool:
    for value in request.requestHeaders.getRawHeaders(b"upgrade", ()):
        if b"websocket" in value.lower():
            return True
    return False


class GlueRoot(Resource):
    """
    The root resource: C{/} with C{Upgrade: websocket} is the WebSocket
    endpoint, everything else is the static folder.
    """

    def __init__(self, static: File, websocket: IResource) -> None:
        Resource.__init__(self)
        self.static = static
        self.websocket = websocket

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        if name == b"" and not request.postpath and _isUpgrade(request):
            return self.websocket
        return self.static.getChildWithDefault(name, request)

    def render(self, request: Any) -> bytes:
        return self.static.render(request)


def makeSite(staticPath: str, factory: Any, timeout: float = 60) -> Site:
    """
    The L{Site} serving C{staticPath} and the WebSocket C{factory} on one
    port.  C{timeout} bounds how long an HTTP connection may sit idle before
    it has sent a complete request.
    """
    root = GlueRoot(StaticFolder(staticPath), WebSocketResource(factory))
    site = Site(root, timeout=timeout)
    site.displayTracebacks = False
    return site
