"""
Tests for L{wsglue.cookies}: reading the session id out of a C{Cookie} header
and issuing new session cookies (SPEC section 5).
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wsglue.cookies import MAX_COOKIE_HEADER, SessionCookies, newSessionId, shortId

GOOD = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


class SessionFromHeaderTests(SynchronousTestCase):
    """
    L{SessionCookies.sessionFromHeader} accepts exactly the well-formed
    session cookies and tolerates whatever else RFC 6265 allows around them.
    """

    def setUp(self) -> None:
        self.cookies = SessionCookies()

    def test_wellFormed(self) -> None:
        """
        A bare 40-character lowercase hex value names the session.
        """
        self.assertEqual(self.cookies.sessionFromHeader(f"CookieName={GOOD}"), GOOD)

    def test_missingHeader(self) -> None:
        """
        No C{Cookie} header names no session.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(None))
        self.assertIsNone(self.cookies.sessionFromHeader(""))

    def test_otherCookiesOnly(self) -> None:
        """
        A header without our cookie names no session.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"other={GOOD}; x=1"))

    def test_empty(self) -> None:
        """
        An empty value names no session.
        """
        self.assertIsNone(self.cookies.sessionFromHeader("CookieName="))
        self.assertIsNone(self.cookies.sessionFromHeader('CookieName=""'))

    def test_wrongLength(self) -> None:
        """
        39 or 41 hex characters name no session.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD[:-1]}"))
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD}0"))

    def test_uppercaseHex(self) -> None:
        """
        Uppercase hex is not a session id (ids are issued in lowercase).
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD.upper()}"))

    def test_nonHex(self) -> None:
        """
        A 40-character value with a non-hex character names no session.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD[:-1]}g"))
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD[:-1]}-"))

    def test_oversizedHeader(self) -> None:
        """
        A header longer than L{MAX_COOKIE_HEADER} is not parsed at all, even
        if it holds a well-formed session cookie.
        """
        padding = "x=" + "a" * MAX_COOKIE_HEADER
        self.assertIsNone(self.cookies.sessionFromHeader(f"CookieName={GOOD}; {padding}"))

    def test_quoted(self) -> None:
        """
        A value in double quotes, as RFC 6265 allows, names the session.
        """
        self.assertEqual(self.cookies.sessionFromHeader(f'CookieName="{GOOD}"'), GOOD)

    def test_severalCookieHeaders(self) -> None:
        """
        Several C{Cookie} headers, which reach the handshake joined with
        C{", "}, are read pair by pair: ours is found whichever header
        holds it.
        """
        self.assertEqual(self.cookies.sessionFromHeader(f"CookieName={GOOD}, x=1"), GOOD)
        self.assertEqual(self.cookies.sessionFromHeader(f"x=1; y=2, CookieName={GOOD}"), GOOD)
        self.assertEqual(self.cookies.sessionFromHeader(f'a=1, CookieName="{GOOD}"; b=2'), GOOD)

    def test_escapesInQuotesRefused(self) -> None:
        """
        A quoted value with backslash escapes is not a session id, though
        L{SimpleCookie} would decode C{\\141} to C{a}: RFC 6265 allows no
        backslash in a cookie value.
        """
        escaped = "".join(f"\\{ord(c):03o}" for c in GOOD)
        self.assertIsNone(self.cookies.sessionFromHeader(f'CookieName="{escaped}"'))
        self.assertIsNone(self.cookies.sessionFromHeader(f'CookieName="\\{GOOD}"'))
        self.assertIsNone(self.cookies.sessionFromHeader(f'x=1; CookieName="{escaped}"; CookieName=zz'))

    def test_attributeNameRefused(self) -> None:
        """
        The name of a cookie attribute (C{Path}, C{Domain}, ...) cannot name
        the session cookie: a C{Cookie} header could never be read back.
        """
        for name in ("Path", "domain", "Expires", "Max-Age", "Secure", "HttpOnly", "SameSite", "Version", "Comment"):
            self.assertRaises(ValueError, SessionCookies, name)

    def test_otherCookiesAndSpaces(self) -> None:
        """
        Other cookies before and after ours and spaces around the pairs are
        tolerated.
        """
        header = f"  a=1 ;  CookieName={GOOD} ;b=2;c=3  "
        self.assertEqual(self.cookies.sessionFromHeader(header), GOOD)

    def test_nameIsCaseSensitive(self) -> None:
        """
        Cookie names are case-sensitive: C{cookiename} is not C{CookieName}.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"cookiename={GOOD}"))

    def test_nameSuffixIsNotOurCookie(self) -> None:
        """
        A cookie whose name merely ends with ours is not ours.
        """
        self.assertIsNone(self.cookies.sessionFromHeader(f"XCookieName={GOOD}"))

    def test_repeatedNameGoodFirst(self) -> None:
        """
        With the name repeated, a well-formed first value is used even if a
        later one is malformed.
        """
        header = f"CookieName={GOOD}; CookieName=junk"
        self.assertEqual(self.cookies.sessionFromHeader(header), GOOD)

    def test_repeatedNameGoodLast(self) -> None:
        """
        With the name repeated, a malformed first value does not hide a
        well-formed later one.
        """
        header = f"CookieName=junk; CookieName={GOOD}"
        self.assertEqual(self.cookies.sessionFromHeader(header), GOOD)

    def test_repeatedNameBothGood(self) -> None:
        """
        With two well-formed values the first one (the most specific path,
        RFC 6265 section 5.4) names the session.
        """
        header = f"CookieName={GOOD}; CookieName={OTHER}"
        self.assertEqual(self.cookies.sessionFromHeader(header), GOOD)

    def test_brokenCookieBefore(self) -> None:
        """
        A broken cookie of another application before ours does not hide it.
        """
        for broken in ['other="unterminated', "a b=1", "=x", "a=\x01", "no-equals-sign"]:
            header = f"{broken}; CookieName={GOOD}"
            self.assertEqual(self.cookies.sessionFromHeader(header), GOOD, header)

    def test_customName(self) -> None:
        """
        The store reads the cookie of the name it was given, not the default.
        """
        cookies = SessionCookies("sid")
        self.assertEqual(cookies.sessionFromHeader(f"CookieName={OTHER}; sid={GOOD}"), GOOD)
        self.assertIsNone(cookies.sessionFromHeader(f"CookieName={GOOD}"))


class IssueTests(SynchronousTestCase):
    """
    New sessions and their C{Set-Cookie} header.
    """

    def test_idFormat(self) -> None:
        """
        Session ids are 40 lowercase hex characters (20 random bytes).
        """
        for _ in range(50):
            self.assertRegex(newSessionId(), re.compile(r"\A[0-9a-f]{40}\Z"))

    def test_idsDiffer(self) -> None:
        """
        Every issued id is new.
        """
        cookies = SessionCookies()
        sids = {cookies.issue()[0] for _ in range(200)}
        self.assertEqual(len(sids), 200)

    def test_issuedValueIsReadBack(self) -> None:
        """
        The cookie value of an issued session names that session.
        """
        cookies = SessionCookies()
        sid, value = cookies.issue()
        self.assertEqual(value, sid)
        self.assertEqual(cookies.sessionFromHeader(f"CookieName={value}"), sid)

    def test_setCookieAttributes(self) -> None:
        """
        The C{Set-Cookie} header is C{Path=/; HttpOnly; SameSite=Lax}, without
        C{Secure} on a plain connection.
        """
        header = SessionCookies().setCookieHeader(GOOD, secure=False)
        self.assertEqual(header, f"CookieName={GOOD}; Path=/; HttpOnly; SameSite=Lax")

    def test_setCookieSecure(self) -> None:
        """
        Over TLS the C{Set-Cookie} header also says C{Secure}.
        """
        header = SessionCookies().setCookieHeader(GOOD, secure=True)
        self.assertEqual(header, f"CookieName={GOOD}; Path=/; HttpOnly; SameSite=Lax; Secure")

    def test_setCookieName(self) -> None:
        """
        The C{Set-Cookie} header uses the configured cookie name.
        """
        header = SessionCookies("sid").setCookieHeader(GOOD, secure=False)
        self.assertTrue(header.startswith(f"sid={GOOD};"), header)

    def test_shortId(self) -> None:
        """
        Logs may show the first 8 characters of a session id.
        """
        self.assertEqual(shortId(GOOD), GOOD[:8])


class SignedTests(SynchronousTestCase):
    """
    With signing keys, cookie values are C{<id>.<HMAC>}: the first key signs,
    every key verifies.
    """

    def test_notSignedWithoutKeys(self) -> None:
        """
        Without keys the store is not signing and the value is the bare id.
        """
        self.assertFalse(SessionCookies().signed)

    def test_validSignatureAccepted(self) -> None:
        """
        A value signed with our key names its session.
        """
        cookies = SessionCookies(keys=[b"k1"])
        self.assertTrue(cookies.signed)
        sid, value = cookies.issue()
        self.assertTrue(value.startswith(sid + "."))
        self.assertEqual(cookies.sessionFromHeader(f"CookieName={value}"), sid)

    def test_bareIdRefused(self) -> None:
        """
        In signed mode a bare (unsigned) id names no session.
        """
        cookies = SessionCookies(keys=[b"k1"])
        self.assertIsNone(cookies.sessionFromHeader(f"CookieName={GOOD}"))

    def test_tamperedSignatureRefused(self) -> None:
        """
        A changed signature names no session.
        """
        cookies = SessionCookies(keys=[b"k1"])
        sid, value = cookies.issue()
        flipped = value[:-1] + ("0" if value[-1] != "0" else "1")
        self.assertIsNone(cookies.sessionFromValue(flipped))

    def test_tamperedIdRefused(self) -> None:
        """
        A signature does not vouch for another id.
        """
        cookies = SessionCookies(keys=[b"k1"])
        sid, value = cookies.issue()
        self.assertIsNone(cookies.sessionFromValue(OTHER + value[40:]))

    def test_foreignKeyRefused(self) -> None:
        """
        A value signed with a key we do not hold names no session.
        """
        value = SessionCookies(keys=[b"theirs"]).valueFor(GOOD)
        self.assertIsNone(SessionCookies(keys=[b"ours"]).sessionFromValue(value))

    def test_rotatedKeyVerifies(self) -> None:
        """
        A value signed with an older key (not the first) still verifies.
        """
        old = SessionCookies(keys=[b"old"]).valueFor(GOOD)
        rotated = SessionCookies(keys=[b"new", b"old"])
        self.assertEqual(rotated.sessionFromValue(old), GOOD)

    def test_firstKeySigns(self) -> None:
        """
        New values are signed with the first key.
        """
        rotated = SessionCookies(keys=[b"new", b"old"])
        value = rotated.valueFor(GOOD)
        self.assertEqual(SessionCookies(keys=[b"new"]).sessionFromValue(value), GOOD)
        self.assertIsNone(SessionCookies(keys=[b"old"]).sessionFromValue(value))


class PropertyTests(SynchronousTestCase):
    """
    Properties of the parser over generated headers.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_anyHeader(self, header: str) -> None:
        """
        Any header whatever gives either no session or a well-formed id; it
        never raises.
        """
        sid = SessionCookies().sessionFromHeader(header)
        if sid is not None:
            self.assertRegex(sid, r"\A[0-9a-f]{40}\Z")

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True).filter(lambda n: n != "CookieName"),
                st.from_regex(r"[A-Za-z0-9._-]{0,20}", fullmatch=True),
            ),
            max_size=5,
        ),
        st.integers(min_value=0, max_value=5),
        st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
    )
    def test_ourCookieAmongOthers(self, others: list, position: int, sid: str) -> None:
        """
        A well-formed session cookie anywhere among other well-formed
        cookies names the session.
        """
        pairs = [f"{name}={value}" for name, value in others]
        pairs.insert(min(position, len(pairs)), f"CookieName={sid}")
        self.assertEqual(SessionCookies().sessionFromHeader("; ".join(pairs)), sid)
