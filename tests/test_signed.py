"""
Tests for signed session ids: the C{--secret-file} keys, signing and
verifying with rotation, and two services sharing one secret file.
"""

from __future__ import annotations

import os
import re

from twisted.internet.defer import inlineCallbacks
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import connect, cookieValue, serve
from wsglue.cookies import SessionCookies
from wsglue.keys import KeyFileError, readKeys
from wsglue.tap import Options

SIGNED = re.compile(r"[0-9a-f]{40}\.[0-9a-f]{64}\Z")


def secretFile(testCase: object, text: str, mode: int = 0o600) -> str:
    path = testCase.mktemp()  # type: ignore[attr-defined]
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class ReadKeysTests(SynchronousTestCase):
    """
    L{readKeys} reads the secret file or says in one line why it cannot.
    """

    def test_keysInOrderBlankLinesIgnored(self) -> None:
        """
        One key per line, in file order, blank lines and surrounding
        whitespace ignored.
        """
        path = secretFile(self, "\nnew-key\n\n  old-key  \n\n")
        self.assertEqual(readKeys(path), [b"new-key", b"old-key"])

    def test_missing(self) -> None:
        """
        A missing file is refused, saying so.
        """
        exc = self.assertRaises(KeyFileError, readKeys, "/nonexistent/secret")
        self.assertIn("does not exist", str(exc))

    def test_empty(self) -> None:
        """
        A file with only blank lines is refused, saying it holds no key.
        """
        exc = self.assertRaises(KeyFileError, readKeys, secretFile(self, "\n \n"))
        self.assertIn("holds no key", str(exc))

    def test_worldReadable(self) -> None:
        """
        A file every user can read is refused, saying how to fix it.
        """
        exc = self.assertRaises(KeyFileError, readKeys, secretFile(self, "k\n", 0o644))
        self.assertIn("readable by every user", str(exc))

    def test_folder(self) -> None:
        """
        A folder is refused.
        """
        exc = self.assertRaises(KeyFileError, readKeys, os.path.dirname(__file__))
        self.assertIn("is a folder", str(exc))

    def test_unreadable(self) -> None:
        """
        A file this user may not read is refused, saying it cannot be read.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root reads every file")
        exc = self.assertRaises(KeyFileError, readKeys, secretFile(self, "k\n", 0o000))
        self.assertIn("cannot be read", str(exc))

    def test_optionError(self) -> None:
        """
        Under C{--secret-file} the same problem is a UsageError naming the
        option.
        """
        exc = self.assertRaises(UsageError, Options().parseOptions, ["--secret-file", "/nonexistent/secret"])
        self.assertEqual(str(exc), "--secret-file '/nonexistent/secret' does not exist")


class SignedCookieTests(SynchronousTestCase):
    """
    L{SessionCookies} with keys signs with the first and verifies with all.
    """

    def test_valueIsIdDotSignature(self) -> None:
        """
        A signed cookie value is the 40-hex id, a dot and the 64-hex
        HMAC-SHA256 signature; it names that id.
        """
        cookies = SessionCookies("C", [b"k1"])
        sid, value = cookies.issue()
        self.assertRegex(value, SIGNED)
        self.assertEqual(value.split(".")[0], sid)
        self.assertEqual(cookies.sessionFromValue(value), sid)

    def test_rotation(self) -> None:
        """
        After rotation (new key first, old key kept), cookies signed with
        the old key are still accepted and new ones are signed with the new
        key.
        """
        old = SessionCookies("C", [b"old"])
        rotated = SessionCookies("C", [b"new", b"old"])
        sid, value = old.issue()
        self.assertEqual(rotated.sessionFromValue(value), sid)
        self.assertEqual(rotated.valueFor(sid), SessionCookies("C", [b"new"]).valueFor(sid))
        self.assertNotEqual(rotated.valueFor(sid), value)

    def test_droppedKeyRefused(self) -> None:
        """
        Once the old key is dropped, its cookies are refused.
        """
        sid, value = SessionCookies("C", [b"old"]).issue()
        self.assertIsNone(SessionCookies("C", [b"new"]).sessionFromValue(value))

    def test_forgeriesRefused(self) -> None:
        """
        A bare id, a tampered id, a tampered or truncated signature are all
        refused when signing.
        """
        cookies = SessionCookies("C", [b"k"])
        sid, value = cookies.issue()
        other = ("0" if sid[0] != "0" else "1") + sid[1:]
        signature = value.split(".")[1]
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        for forged in (
            sid,
            other + "." + signature,
            sid + "." + flipped,
            value[:-1],
            value + "0",
            sid + "." + signature.upper(),
        ):
            self.assertIsNone(cookies.sessionFromValue(forged), forged)


class SignedEndToEndTests(TestCase):
    """
    Over real sockets: services with C{--secret-file}.
    """

    @inlineCallbacks
    def test_setCookieSigned(self) -> None:
        """
        A new session's C{Set-Cookie} carries a signed value.
        """
        running = serve(self, "--secret-file", secretFile(self, "k1\n"))
        client = yield connect(self, running.port)
        self.assertRegex(cookieValue(client.setCookie), SIGNED)

    @inlineCallbacks
    def test_twoServicesShareSessions(self) -> None:
        """
        Two services given the same secret file accept each other's
        cookies: the session id issued by one names the session on the
        other, without a new C{Set-Cookie}.
        """
        path = secretFile(self, "k1\nk0\n")
        one = serve(self, "--secret-file", path)
        two = serve(self, "--secret-file", path)
        first = yield connect(self, one.port)
        value = cookieValue(first.setCookie)
        second = yield connect(self, two.port, headers={"Cookie": f"CookieName={value}"})
        self.assertIsNone(second.setCookie)
        self.assertEqual(two.registry.sessions(), [value.split(".")[0]])
        self.assertEqual(one.registry.sessions(), two.registry.sessions())

    @inlineCallbacks
    def test_otherSecretGetsFreshCookie(self) -> None:
        """
        A cookie signed by a deployment with another secret (or a bare id)
        is replaced by a fresh signed cookie, and the refusal is counted.
        """
        one = serve(self, "--secret-file", secretFile(self, "ours\n"))
        two = serve(self, "--secret-file", secretFile(self, "theirs\n"))
        first = yield connect(self, one.port)
        value = cookieValue(first.setCookie)
        second = yield connect(self, two.port, headers={"Cookie": f"CookieName={value}"})
        fresh = cookieValue(second.setCookie)
        self.assertRegex(fresh, SIGNED)
        self.assertNotEqual(fresh.split(".")[0], value.split(".")[0])
        bare = yield connect(self, two.port, headers={"Cookie": "CookieName=" + "a" * 40})
        self.assertRegex(cookieValue(bare.setCookie), SIGNED)
        self.assertEqual(two.factory.limits.counters["refused_cookie"], 2)

    @inlineCallbacks
    def test_plainIdsWithoutSecret(self) -> None:
        """
        Without C{--secret-file}, the cookie is the plain 40-hex id.
        """
        running = serve(self)
        client = yield connect(self, running.port)
        self.assertRegex(cookieValue(client.setCookie), r"[0-9a-f]{40}\Z")
