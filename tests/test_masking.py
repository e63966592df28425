"""
Tests for L{wsglue.levers.masking}: the small-frame masker gives exactly what
RFC 6455 masking gives, in one piece or many.
"""

from __future__ import annotations

import random

import autobahn.websocket.protocol as autobahnProtocol
from twisted.trial.unittest import SynchronousTestCase

from wsglue.levers.masking import SMALL, SmallMasker, createXorMasker


def reference(mask: bytes, data: bytes, start: int = 0) -> bytes:
    """
    RFC 6455 section 5.3, byte by byte.
    """
    return bytes(b ^ mask[(start + i) % 4] for i, b in enumerate(data))


class SmallMaskerTests(SynchronousTestCase):
    """
    L{SmallMasker} against the definition.
    """

    def setUp(self) -> None:
        self.random = random.Random(6455)

    def test_wholePayloads(self) -> None:
        """
        Any payload of any size up to a few KiB, with any mask, unmasks as
        RFC 6455 says.
        """
        for _ in range(500):
            mask = self.random.randbytes(4)
            data = self.random.randbytes(self.random.randrange(0, 3000))
            self.assertEqual(SmallMasker(mask).process(data), reference(mask, data))

    def test_pieces(self) -> None:
        """
        A payload processed in pieces (as it arrives across reads) gives the
        same bytes, and the pointer counts what was processed.
        """
        for _ in range(300):
            mask = self.random.randbytes(4)
            data = self.random.randbytes(self.random.randrange(1, 600))
            masker = SmallMasker(mask)
            out, at = b"", 0
            while at < len(data):
                step = self.random.randrange(1, 9)
                out += masker.process(data[at : at + step])
                at += step
            self.assertEqual(out, reference(mask, data))
            self.assertEqual(masker.pointer(), len(data))

    def test_reset(self) -> None:
        """
        After C{reset} the mask starts again at its first byte.
        """
        mask = b"\x01\x02\x03\x04"
        masker = SmallMasker(mask)
        masker.process(b"abc")
        masker.reset()
        self.assertEqual(masker.pointer(), 0)
        self.assertEqual(masker.process(b"hello"), reference(mask, b"hello"))

    def test_empty(self) -> None:
        """
        An empty payload gives nothing and moves nothing.
        """
        masker = SmallMasker(b"abcd")
        self.assertEqual(masker.process(b""), b"")
        self.assertEqual(masker.pointer(), 0)


class CreateXorMaskerTests(SynchronousTestCase):
    """
    Which masker a frame gets.
    """

    def test_smallFramesGetSmallMasker(self) -> None:
        """
        Frames shorter than L{SMALL} bytes get L{SmallMasker}; larger ones
        Autobahn's own masker, which unmasks the same way.
        """
        mask = b"\x10\x20\x30\x40"
        self.assertIsInstance(createXorMasker(mask, SMALL - 1), SmallMasker)
        big = createXorMasker(mask, SMALL)
        self.assertNotIsInstance(big, SmallMasker)
        data = bytes(range(256)) * 8
        self.assertEqual(big.process(data), reference(mask, data))

    def test_installed(self) -> None:
        """
        Autobahn's protocol module builds its frame maskers with
        L{createXorMasker} once the lever is turned on (not when imported).
        """
        from wsglue.levers import Levers

        self.patch(autobahnProtocol, "create_xor_masker", autobahnProtocol.create_xor_masker)
        levers = Levers(True)
        levers.apply()
        self.assertIn("masking", levers.active)
        self.assertIs(autobahnProtocol.create_xor_masker, createXorMasker)
