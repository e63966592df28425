"""
Tests for L{wsglue.web.front}: the page and its files over HTTP on the WebSocket's
port (SPEC section 4), with raw requests over real loopback sockets so that
the path is sent exactly as written (no client normalises C{..} away).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.common import serve

SECRET = b"outside-the-static-folder-4f1e"
INDEX = b"<!DOCTYPE html><title>t</title><p>the test page</p>"


class _RawHTTP(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


class Response:
    """
    A parsed HTTP response: C{status}, C{headers} (lower-case names) and
    C{body}.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()


@inlineCallbacks
def get(port: int, target: str, headers: Tuple[str, ...] = ()) -> Any:
    """
    Send C{GET target} exactly as given and return the L{Response}.
    """
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", *headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    proto = _RawHTTP(request)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    yield connectProtocol(endpoint, proto)
    proto.done.addTimeout(5, reactor, onTimeoutCancel=lambda *a: proto.transport.abortConnection())
    raw = yield proto.done
    return Response(raw)


class DefaultPageTests(TestCase):
    """
    The page shipped with wsglue.
    """

    def setUp(self) -> None:
        self.port = serve(self).port

    @inlineCallbacks
    def test_rootIsThePage(self) -> None:
        """
        C{GET /} answers C{index.html} as C{text/html}.
        """
        response = yield get(self.port, "/")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/html"))
        self.assertIn(b'id="connect"', response.body)
        self.assertIn(b"scripts/ws-script.js", response.body)

    @inlineCallbacks
    def test_script(self) -> None:
        """
        C{/scripts/ws-script.js} is served with a JavaScript content type.
        """
        response = yield get(self.port, "/scripts/ws-script.js")
        self.assertEqual(response.status, 200)
        self.assertIn("javascript", response.headers["content-type"])
        self.assertIn(b"WebSocket", response.body)

    @inlineCallbacks
    def test_getWithoutUpgradeIsThePage(self) -> None:
        """
        C{GET /} with a C{Connection: Upgrade} header but no
        C{Upgrade: websocket} is the page, not a handshake.
        """
        response = yield get(self.port, "/", ("Sec-WebSocket-Version: 13",))
        self.assertEqual(response.status, 200)
        self.assertIn(b'id="connect"', response.body)


class StaticFolderTests(TestCase):
    """
    A C{--static} folder, with a secret file beside it and symlinks that
    lead out of it.
    """

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        root = os.path.join(base, "root")
        os.makedirs(os.path.join(root, "scripts"))
        os.makedirs(os.path.join(root, "empty"))
        os.makedirs(os.path.join(base, "outside"))
        self.write(os.path.join(root, "index.html"), INDEX)
        self.write(os.path.join(root, "scripts", "app.js"), b"var x = 1;")
        self.write(os.path.join(root, "style.css"), b"body {}")
        self.write(os.path.join(root, "noext"), b"\x00\x01 raw")
        self.write(os.path.join(base, "secret.txt"), SECRET)
        self.write(os.path.join(base, "outside", "secret.txt"), SECRET)
        os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "leak.txt"))
        os.symlink(os.path.join(base, "outside"), os.path.join(root, "leakdir"))
        self.port = serve(self, "--static", root).port

    def write(self, path: str, content: bytes) -> None:
        with open(path, "wb") as f:
            f.write(content)

    def assertRefused(self, response: Response) -> None:
        self.assertEqual(response.status, 404)
        self.assertNotIn(SECRET, response.body)

    @inlineCallbacks
    def test_index(self) -> None:
        """
        C{GET /} answers the folder's C{index.html}.
        """
        response = yield get(self.port, "/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, INDEX)
        self.assertTrue(response.headers["content-type"].startswith("text/html"))

    @inlineCallbacks
    def test_fileAtItsPath(self) -> None:
        """
        Any file under the folder is served at its relative path with its
        content type.
        """
        js = yield get(self.port, "/scripts/app.js")
        css = yield get(self.port, "/style.css")
        self.assertEqual((js.status, js.body), (200, b"var x = 1;"))
        self.assertIn("javascript", js.headers["content-type"])
        self.assertEqual(css.headers["content-type"].split(";")[0], "text/css")

    @inlineCallbacks
    def test_missing(self) -> None:
        """
        A missing file is 404.
        """
        response = yield get(self.port, "/nope.html")
        self.assertEqual(response.status, 404)
        response = yield get(self.port, "/scripts/nope.js")
        self.assertEqual(response.status, 404)

    @inlineCallbacks
    def test_directoryNotListed(self) -> None:
        """
        A directory is 404, never a listing of its files.
        """
        for target in ("/scripts/", "/empty/"):
            response = yield get(self.port, target)
            self.assertEqual(response.status, 404, target)
            self.assertNotIn(b"app.js", response.body)

    @inlineCallbacks
    def test_directoryWithoutSlashNotListed(self) -> None:
        """
        A directory named without its trailing slash is 404 too, not a
        redirect to the slash form.
        """
        response = yield get(self.port, "/scripts")
        self.assertEqual(response.status, 404)
        self.assertNotIn(b"app.js", response.body)

    @inlineCallbacks
    def test_dotDot(self) -> None:
        """
        C{/../secret.txt} does not leave the folder.
        """
        for target in ("/../secret.txt", "/scripts/../../secret.txt", "/./../secret.txt"):
            response = yield get(self.port, target)
            self.assertRefused(response)

    @inlineCallbacks
    def test_encodedDotDot(self) -> None:
        """
        C{%2e%2e} (any case) does not leave the folder.
        """
        for target in (
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/.%2e/secret.txt",
            "/scripts/%2e%2e/%2e%2e/secret.txt",
        ):
            response = yield get(self.port, target)
            self.assertRefused(response)

    @inlineCallbacks
    def test_encodedSlash(self) -> None:
        """
        An encoded slash (C{%2f}, C{%5c}) does not leave the folder or reach
        a file through one path segment.
        """
        for target in (
            "/..%2fsecret.txt",
            "/%2e%2e%2fsecret.txt",
            "/scripts%2fapp.js",
            "/..%5csecret.txt",
            "/%2fetc%2fpasswd",
        ):
            response = yield get(self.port, target)
            self.assertRefused(response)
            self.assertNotIn(b"root:", response.body)

    @inlineCallbacks
    def test_absolutePath(self) -> None:
        """
        A request for an absolute file system path is 404.
        """
        response = yield get(self.port, "//etc/passwd")
        self.assertRefused(response)
        self.assertNotIn(b"root:", response.body)

    @inlineCallbacks
    def test_symlinkOut(self) -> None:
        """
        A symlink in the folder that points outside it is 404: never the
        outside file's content.
        """
        response = yield get(self.port, "/leak.txt")
        self.assertRefused(response)

    @inlineCallbacks
    def test_symlinkedDirectoryOut(self) -> None:
        """
        A file reached through a symlinked directory that points outside is
        404.
        """
        response = yield get(self.port, "/leakdir/secret.txt")
        self.assertRefused(response)

    @inlineCallbacks
    def test_undecodablePath(self) -> None:
        """
        A path that is not UTF-8 is 404, not a server error.
        """
        response = yield get(self.port, "/%ff%fe")
        self.assertEqual(response.status, 404)

    @inlineCallbacks
    def test_nulInPath(self) -> None:
        """
        A NUL byte in a path segment is 404, not a server error (the file
        system calls would raise on it).
        """
        for target in ("/%00", "/index.html%00", "/scripts/%00x.js"):
            response = yield get(self.port, target)
            self.assertEqual(response.status, 404, target)
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_unknownTypeIsBytes(self) -> None:
        """
        A file whose type cannot be told from its name is served as
        C{application/octet-stream}, not as HTML.
        """
        response = yield get(self.port, "/noext")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/octet-stream")
