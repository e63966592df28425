"""
The static folder: the browser page and any file under it, with a correct
C{Content-Type}.  It never lists a directory and never serves a path
outside itself (C{..}, encoded variants, symlinks that lead out).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python.filepath import FilePath
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.static import File

_NOT_FOUND = notFound()


class StaticFolder(File):
    """
    A L{File} that serves only what lies inside its root folder and never
    lists a directory.
    """

    # File declares its own _UnsafeNoResource here; any IResource serves.
    childNotFound = _NOT_FOUND  # type: ignore[assignment]

    def __init__(self, path: str, *args: Any, root: str = "", **kwargs: Any) -> None:
        File.__init__(self, path, *args, **kwargs)
        self.root = root or os.path.realpath(path)

    def createSimilarFile(self, path: str) -> "StaticFolder":
        f = File.createSimilarFile(self, path)
        f.root = self.root
        return f

    def directoryListing(self) -> IResource:
        return _NOT_FOUND

    def render(self, request: Any) -> bytes:
        # A folder asked for without its trailing slash: File would
        # redirect to the slash form, which is a 404 anyway.
        if self.isdir():
            return _NOT_FOUND.render(request)
        return File.render(self, request)

    def getChild(self, path: bytes, request: Any) -> IResource:
        # Undecodable and NUL-bearing names cannot name a file of ours; the
        # file system calls would raise on a NUL (a 500 and a traceback).
        if b"\x00" in path:
            return _NOT_FOUND
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
