"""
Tests for L{wsglue.service.describeAddress}: the URL of the start-up line
(SPEC section 9).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from wsglue.service import describeAddress


class _Port:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getHost(self) -> Any:
        return self.address


class DescribeAddressTests(SynchronousTestCase):
    """
    What C{started websocket server at …} names.
    """

    def test_anyInterfaceIsLocalhost(self) -> None:
        """
        A port on every interface is named C{ws://localhost:PORT}.
        """
        port = _Port(IPv4Address("TCP", "0.0.0.0", 9998))
        self.assertEqual(describeAddress(port, False), "ws://localhost:9998")

    def test_interface(self) -> None:
        """
        A port bound to one interface names it.
        """
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(describeAddress(port, False), "ws://127.0.0.1:8080")

    def test_tls(self) -> None:
        """
        A TLS port is C{wss://}.
        """
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8443))
        self.assertEqual(describeAddress(port, True), "wss://127.0.0.1:8443")

    def test_ipv6(self) -> None:
        """
        An IPv6 address is bracketed.
        """
        port = _Port(IPv6Address("TCP", "::1", 9998))
        self.assertEqual(describeAddress(port, False), "ws://[::1]:9998")

    def test_unixPathAsText(self) -> None:
        """
        A unix socket is named by its path as text, not as a bytes repr.
        """
        port = _Port(UNIXAddress(b"/run/wsglue.sock"))
        self.assertEqual(describeAddress(port, False), "ws+unix:///run/wsglue.sock")
