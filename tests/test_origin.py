"""
Tests for L{wsglue.origin.OriginPolicy}: the Origin check of the WebSocket
handshake (SPEC section 3, C{--allowed-origin}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wsglue.origin import OriginPolicy


class SameOriginTests(SynchronousTestCase):
    """
    Without patterns only the page's own origin (the C{Host} header, with the
    connection's scheme) is allowed.
    """

    def setUp(self) -> None:
        self.policy = OriginPolicy()

    def test_noOrigin(self) -> None:
        """
        A client that sends no C{Origin} (not a browser) is allowed.
        """
        self.assertTrue(self.policy.allows(None, "127.0.0.1:9998", False))
        self.assertTrue(self.policy.allows("", "127.0.0.1:9998", False))

    def test_sameOrigin(self) -> None:
        """
        The origin the page was served from is allowed.
        """
        self.assertTrue(self.policy.allows("http://127.0.0.1:9998", "127.0.0.1:9998", False))
        self.assertTrue(self.policy.allows("https://example.com:8443", "example.com:8443", True))

    def test_defaultPort(self) -> None:
        """
        A default port may be spelled out on one side and left out on the
        other.
        """
        self.assertTrue(self.policy.allows("http://example.com", "example.com:80", False))
        self.assertTrue(self.policy.allows("https://example.com:443", "example.com", True))

    def test_hostCaseInsensitive(self) -> None:
        """
        Host names compare without regard to case.
        """
        self.assertTrue(self.policy.allows("http://Example.COM:8080", "example.com:8080", False))

    def test_foreignHost(self) -> None:
        """
        Another host is refused.
        """
        self.assertFalse(self.policy.allows("http://evil.example:9998", "127.0.0.1:9998", False))

    def test_foreignPort(self) -> None:
        """
        The same host on another port is another origin, refused.
        """
        self.assertFalse(self.policy.allows("http://127.0.0.1:8080", "127.0.0.1:9998", False))

    def test_schemeMustMatchConnection(self) -> None:
        """
        An C{https} page may not open a plain WebSocket and an C{http} page
        may not open a TLS one.
        """
        self.assertFalse(self.policy.allows("https://example.com", "example.com", False))
        self.assertFalse(self.policy.allows("http://example.com", "example.com", True))

    def test_nullOrigin(self) -> None:
        """
        The opaque origin C{null} (sandboxed frames, C{file:} pages) is refused.
        """
        self.assertFalse(self.policy.allows("null", "127.0.0.1:9998", False))

    def test_garbage(self) -> None:
        """
        An origin or host that is not a URL is refused, not an exception.
        """
        self.assertFalse(self.policy.allows("http://[::1", "127.0.0.1:9998", False))
        self.assertFalse(self.policy.allows("http://127.0.0.1:9998", "", False))
        self.assertFalse(self.policy.allows("http://127.0.0.1:99999", "127.0.0.1:99999", False))


class PatternTests(SynchronousTestCase):
    """
    C{--allowed-origin} patterns replace the same-origin default.
    """

    def test_starAllowsAny(self) -> None:
        """
        C{*} allows every origin.
        """
        policy = OriginPolicy(["*"])
        self.assertTrue(policy.allows("http://evil.example", "127.0.0.1:9998", False))
        self.assertTrue(policy.allows("null", "127.0.0.1:9998", False))

    def test_subdomainWildcard(self) -> None:
        """
        C{https://*.example.com} allows the subdomains of example.com over
        https, nothing else.
        """
        policy = OriginPolicy(["https://*.example.com"])
        self.assertTrue(policy.allows("https://app.example.com", "x", False))
        self.assertFalse(policy.allows("http://app.example.com", "x", False))
        self.assertFalse(policy.allows("https://example.org", "x", False))
        self.assertFalse(policy.allows("https://app.example.com.evil.org", "x", False))
        self.assertFalse(policy.allows("https://evilexample.com", "x", False))

    def test_anyPort(self) -> None:
        """
        C{http://localhost:*} allows localhost on any port, the default port
        included.
        """
        policy = OriginPolicy(["http://localhost:*"])
        self.assertTrue(policy.allows("http://localhost:8080", "x", False))
        self.assertTrue(policy.allows("http://localhost", "x", False))
        self.assertFalse(policy.allows("http://localhost.evil.org:8080", "x", False))

    def test_patternsReplaceSameOrigin(self) -> None:
        """
        With patterns given, the page's own origin is allowed only if a
        pattern names it.
        """
        policy = OriginPolicy(["https://app.example.com"])
        self.assertFalse(policy.allows("http://127.0.0.1:9998", "127.0.0.1:9998", False))
        self.assertTrue(policy.allows("https://app.example.com", "127.0.0.1:9998", False))

    def test_severalPatterns(self) -> None:
        """
        An origin matching any one of several patterns is allowed.
        """
        policy = OriginPolicy(["https://a.example", "https://b.example"])
        self.assertTrue(policy.allows("https://b.example", "x", False))
        self.assertFalse(policy.allows("https://c.example", "x", False))

    def test_noOriginWithPatterns(self) -> None:
        """
        A client that sends no C{Origin} is allowed whatever the patterns.
        """
        self.assertTrue(OriginPolicy(["https://a.example"]).allows(None, "x", False))
