"""
L{wsglue.continuity} in memory: the frames, the parsing of client frames,
the ids a client sent, and a L{SessionProtocol} on a fake connection.
"""

from __future__ import annotations

import json
from typing import Any, List, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_registry import A, FakeConnection
from wsglue.continuity import (
    ID_WINDOW,
    IDLE_CLIENTS,
    ClientIds,
    ProtocolError,
    SessionProtocol,
    parseHello,
    parseMessage,
    replyFrame,
    streamFrame,
    welcomeFrame,
)
from wsglue.registry import SessionRegistry
from wsglue.streams import History


class FramesTests(SynchronousTestCase):
    """
    What the server sends.
    """

    def test_frames(self) -> None:
        """
        Each frame is the JSON the protocol describes.
        """
        self.assertEqual(json.loads(streamFrame("s", 3, 'say "é"')), {"t": "m", "s": "s", "o": 3, "d": 'say "é"'})
        self.assertEqual(json.loads(streamFrame("b", 1, b"\xff")), {"t": "m", "s": "b", "o": 1, "b64": "/w=="})
        self.assertEqual(json.loads(replyFrame("x")), {"t": "r", "d": "x"})
        self.assertEqual(json.loads(replyFrame(b"x")), {"t": "r", "b64": "eA=="})
        self.assertEqual(
            json.loads(welcomeFrame(True, ("e", 1), ("f", 2))),
            {"t": "welcome", "recovered": True, "s": ["e", 1], "b": ["f", 2]},
        )
        self.assertRaises(TypeError, replyFrame, 5)


class ParsingTests(SynchronousTestCase):
    """
    What the server accepts from a client.
    """

    def test_hellos(self) -> None:
        """
        Good hellos give the client id and positions; bad ones are 1002.
        """
        self.assertEqual(parseHello({"client": "abcdefgh"}), ("abcdefgh", None))
        self.assertEqual(
            parseHello({"client": "a" * 64, "resume": {"s": ["e", 0], "b": ["f", 9]}}),
            ("a" * 64, (("e", 0), ("f", 9))),
        )
        for bad in [
            {},
            {"client": "abcdefg"},
            {"client": "a" * 65},
            {"client": "abc defg"},
            {"client": "abcdefgh", "resume": {"s": ["e", True], "b": ["f", 0]}},
            {"client": "abcdefgh", "resume": {"s": ["e", 1.0], "b": ["f", 0]}},
            {"client": "abcdefgh", "resume": {"s": [1, 1], "b": ["f", 0]}},
            {"client": "abcdefgh", "resume": {"s": ["e", 1, 2], "b": ["f", 0]}},
            {"client": "abcdefgh", "resume": "yes"},
        ]:
            e = self.assertRaises(ProtocolError, parseHello, bad)
            self.assertEqual(e.code, 1002, bad)

    def test_messages(self) -> None:
        """
        Good C{m} frames give the id and payload; bad ones are 1002.
        """
        self.assertEqual(parseMessage({"id": 1, "d": "x"}), (1, "x"))
        self.assertEqual(parseMessage({"id": 2**53 - 1, "b64": "eA=="}), (2**53 - 1, b"x"))
        for bad in [
            {"id": 1},
            {"id": 1, "d": None},
            {"id": 1, "d": "x", "b64": "eA=="},
            {"id": 1, "b64": "not base64"},
            {"id": "1", "d": "x"},
            {"id": 0, "d": "x"},
            {"id": False, "d": "x"},
            {"d": "x"},
        ]:
            e = self.assertRaises(ProtocolError, parseMessage, bad)
            self.assertEqual(e.code, 1002, bad)


class ClientIdsTests(SynchronousTestCase):
    """
    The ids a client sent.
    """

    def test_window(self) -> None:
        """
        An id is a repeat within the client's last 1,000 ids.
        """
        ids = ClientIds()
        self.assertTrue(ids.take(1))
        self.assertFalse(ids.take(1))
        for i in range(2, ID_WINDOW + 1):
            ids.take(i)
        self.assertFalse(ids.take(1))
        ids.take(ID_WINDOW + 1)
        self.assertEqual(len(ids.seen), ID_WINDOW)
        self.assertTrue(ids.take(1))


class V1Connection(FakeConnection):
    """
    A fake connection with the raw frame writer the protocol uses.
    """

    def __init__(self) -> None:
        FakeConnection.__init__(self)
        self.raw: List[Any] = []
        self.continuity: Any = None

    def sendRaw(self, message: Any) -> bool:
        self.raw.append(json.loads(message))
        return True


class Handler:
    def __init__(self) -> None:
        self.taken: List[Tuple[str, Any]] = []

    def received(self, sid: str, conn: Any, message: Any) -> None:
        self.taken.append((sid, message))


class SessionProtocolTests(SynchronousTestCase):
    """
    A L{SessionProtocol} on a fake connection and a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = SessionRegistry()
        self.registry.configure(History(100, 262144, 120, self.clock), presenceGrace=0, clock=self.clock)
        self.handler = Handler()

    def open(self, timeout: float = 10) -> Tuple[V1Connection, SessionProtocol]:
        conn = V1Connection()
        self.registry.add(A, conn)
        session = conn.continuity = SessionProtocol(conn, A, self.registry, self.handler, helloTimeout=timeout)
        return conn, session

    def close(self, conn: V1Connection, session: SessionProtocol) -> None:
        session.closed()
        self.registry.remove(A, conn)

    def test_helloTimeout(self) -> None:
        """
        No hello within the timeout: 1002.
        """
        conn, _ = self.open(10)
        self.clock.advance(10)
        self.assertEqual(conn.closes, [(1002, "no hello in time")])

    def test_helloCancelsTimeout(self) -> None:
        """
        A hello in time cancels the timer.
        """
        conn, session = self.open(10)
        session.received(json.dumps({"t": "hello", "client": "abcdefgh"}))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(conn.raw[0]["t"], "welcome")

    def test_closeCancelsTimeout(self) -> None:
        """
        A connection closed before its hello leaves no timer.
        """
        conn, session = self.open(10)
        self.close(conn, session)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleClientsCapped(self) -> None:
        """
        A session remembers at most the 16 most recently closed clients.
        """
        for i in range(IDLE_CLIENTS + 5):
            conn, session = self.open()
            session.received(json.dumps({"t": "hello", "client": f"client-{i:04}"}))
            self.clock.advance(1)
            self.close(conn, session)
        conn, session = self.open()
        session.received(json.dumps({"t": "hello", "client": "client-last"}))
        record = self.registry.record(A)
        assert record is not None and record.state is not None
        clients = record.state["clients"]
        self.assertEqual(len(clients), IDLE_CLIENTS + 1)
        self.assertNotIn("client-0000", clients)
        self.assertIn(f"client-{IDLE_CLIENTS + 4:04}", clients)
