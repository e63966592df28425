"""
Tests for L{wsglue.cluster.resp}: commands encoded in one pass are the
bytes txredisapi makes, and the command connections use it.
"""

from __future__ import annotations

from typing import Any, List

import txredisapi
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsglue.cluster.resp import encodeCommand, fastProtocol

ARGUMENTS: List[Any] = [
    "EVALSHA",
    "a" * 40,
    2,
    0,
    -17,
    2**70,
    b"",
    "",
    b"\x00\xff\r\n binary",
    "héllo ✓",
    1.5,
    True,
    False,
    bytearray(b"abc"),
    None,
]


class EncodeTests(SynchronousTestCase):
    """
    L{encodeCommand} and txredisapi's C{_build_command}, side by side.
    """

    def setUp(self) -> None:
        self.plain = txredisapi.RedisProtocol(charset=None)
        self.fast = fastProtocol(txredisapi.RedisProtocol)(charset=None)

    def test_sameBytes(self) -> None:
        """
        Every kind of argument wsglue sends (and others) is encoded as
        txredisapi encodes it, alone and all in one command.
        """
        for arg in ARGUMENTS:
            self.assertEqual(self.fast._build_command("SET", arg), self.plain._build_command("SET", arg), repr(arg))
        self.assertEqual(self.fast._build_command(*ARGUMENTS), self.plain._build_command(*ARGUMENTS))
        self.assertEqual(encodeCommand(["PING"], self.plain._encode_value), b"*1\r\n$4\r\nPING\r\n")

    def test_invalidText(self) -> None:
        """
        Text that cannot be UTF-8 (a lone surrogate) is refused as
        txredisapi refuses it.
        """
        self.assertRaises(txredisapi.InvalidData, self.plain._build_command, "SET", "\ud800")
        self.assertRaises(txredisapi.InvalidData, self.fast._build_command, "SET", "\ud800")

    def test_charsetLeftToTxredisapi(self) -> None:
        """
        A protocol with a charset encodes as txredisapi does.
        """
        plain = txredisapi.RedisProtocol(charset="latin-1")
        fast = fastProtocol(txredisapi.RedisProtocol)(charset="latin-1")
        self.assertEqual(fast._build_command("SET", "é", 3), plain._build_command("SET", "é", 3))

    def test_factoriesUseIt(self) -> None:
        """
        The command connections of C{--redis} and of a stream source encode
        with it.
        """
        from wsglue.cluster.link import TxRedisLink, _CommandFactory
        from wsglue.cluster.redisurl import parseRedisURL
        from wsglue.counters import Counters
        from wsglue.sources.redisstream import RedisStreamSource, _factory, parseStreamURL

        url = parseRedisURL("redis://127.0.0.1:1/0")
        factory = _CommandFactory(TxRedisLink(url, Clock()), url)
        self.assertTrue(issubclass(factory.protocol, txredisapi.RedisProtocol))
        self.assertIsNot(factory.protocol._build_command, txredisapi.RedisProtocol._build_command)
        spec = parseStreamURL("redis-stream://127.0.0.1:1/0?stream=s&group=g")
        source = RedisStreamSource(spec, None, Counters(), Clock())
        self.assertIsNot(_factory(source).protocol._build_command, txredisapi.RedisProtocol._build_command)
