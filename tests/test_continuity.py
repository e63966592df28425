"""
The C{wsglue.v1} subprotocol over real loopback sockets, in one process,
with the speed levers as the suite runs them: selection, hello and
welcome, replay, replies and acks, and the close codes of frames that
break the protocol.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.common import Client, connect, cookieValue, serve, waitFor

V1 = "wsglue.v1"
CLIENT = "tab-0001"


class V1Client(Client):
    """
    A raw client that offers C{wsglue.v1}: sends frames as given and
    queues what it receives, JSON decoded.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode("utf-8")
        try:
            self.messages.put(json.loads(text))
        except ValueError:
            self.messages.put(text)

    def frame(self, **members: Any) -> None:
        self.send(json.dumps(members))

    @property
    def protocol(self) -> Optional[str]:
        return self.websocket_protocol_in_use


@inlineCallbacks
def nextMessages(client: Client, n: int) -> Any:
    got = []
    for _ in range(n):
        got.append((yield client.nextMessage()))
    return got


def cookieHeader(client: Client, name: str = "CookieName") -> Dict[str, str]:
    """
    The request header that makes a new connection join C{client}'s session.
    """
    assert client.setCookie is not None
    return {"Cookie": f"{name}={cookieValue(client.setCookie)}"}


class Base(TestCase):
    argv: List[str] = ["--handler", "tests.handlers_for_tests:Recorder"]

    def setUp(self) -> None:
        self.running = serve(self, *self.argv)
        self.registry = self.running.registry
        self.recorder = self.running.factory.handler.handler

    def connect(self, headers: Optional[Dict[str, str]] = None, protocols: Any = (V1,)) -> Any:
        return connect(self, self.running.port, headers=headers, protocols=protocols, clientProtocol=V1Client)

    @inlineCallbacks
    def hello(self, headers: Optional[Dict[str, str]] = None, client: str = CLIENT, resume: Any = None) -> Any:
        """
        Connect with C{wsglue.v1}, say hello; fire with the client and the
        welcome.
        """
        c = yield self.connect(headers)
        frame: Dict[str, Any] = {"t": "hello", "client": client}
        if resume is not None:
            frame["resume"] = resume
        c.frame(**frame)
        welcome = yield c.nextMessage()
        self.assertEqual(welcome["t"], "welcome", welcome)
        return c, welcome

    def sidOf(self, c: Client) -> str:
        assert c.setCookie is not None
        return cookieValue(c.setCookie).split(".")[0]


class SelectionTests(Base):
    """
    Which connections speak C{wsglue.v1}.
    """

    @inlineCallbacks
    def test_selected(self) -> Any:
        """
        A client offering C{wsglue.v1} gets it selected in the 101.
        """
        c = yield self.connect()
        self.assertEqual(c.protocol, V1)
        self.assertEqual(c.responseHeaders.get("sec-websocket-protocol"), V1)

    @inlineCallbacks
    def test_unknownServedPlainly(self) -> Any:
        """
        A client offering only subprotocols the server does not know gets
        none selected and is served as a plain client.
        """
        c = yield self.connect(protocols=("chat", "wsglue.v2"))
        self.assertIsNone(c.protocol)
        c.send("echo hi")
        self.assertEqual((yield c.nextMessage()), "echo: hi")

    @inlineCallbacks
    def test_amongOthers(self) -> Any:
        """
        C{wsglue.v1} offered among others is selected.
        """
        c = yield self.connect(protocols=("chat", V1))
        self.assertEqual(c.protocol, V1)


class ContinuityOffTests(Base):
    """
    C{--history-size 0} turns continuity off.
    """

    argv = Base.argv + ["--history-size", "0"]

    @inlineCallbacks
    def test_notSelected(self) -> Any:
        """
        C{wsglue.v1} is not selected: the client is served plainly.
        """
        c = yield self.connect()
        self.assertIsNone(c.protocol)
        c.send("echo x")
        self.assertEqual((yield c.nextMessage()), "echo: x")


class HelloTests(Base):
    """
    C{hello}, C{welcome}, replies, acks and live messages.
    """

    @inlineCallbacks
    def test_freshHello(self) -> Any:
        """
        A fresh hello is answered C{recovered: false} with the current
        positions of both streams.
        """
        self.registry.broadcast("before")
        c, welcome = yield self.hello()
        assert self.registry.broadcastStream is not None
        epoch = self.registry.sessionStream(self.sidOf(c)).epoch  # type: ignore[union-attr]
        self.assertEqual(
            welcome,
            {"t": "welcome", "recovered": False, "s": [epoch, 0], "b": [self.registry.broadcastStream.epoch, 1]},
        )

    @inlineCallbacks
    def test_messageReplyAck(self) -> Any:
        """
        C{m} is handed to the handler; its reply comes as C{r}, then the ack.
        """
        c, _ = yield self.hello()
        c.frame(t="m", id=1, d="echo hi")
        self.assertEqual((yield c.nextMessage()), {"t": "r", "d": "echo: hi"})
        self.assertEqual((yield c.nextMessage()), {"t": "ack", "id": 1})
        received = [e[3] for e in self.recorder.events if e[0] == "received"]
        self.assertEqual(received, ["echo hi"])

    @inlineCallbacks
    def test_binaryReply(self) -> Any:
        """
        A binary message (C{b64}) reaches the handler as bytes; a binary
        reply comes as C{b64}.
        """
        c, _ = yield self.hello()
        c.frame(t="m", id=1, b64="AQI=")
        self.assertEqual((yield c.nextMessage()), {"t": "r", "b64": "AgE="})
        self.assertEqual((yield c.nextMessage()), {"t": "ack", "id": 1})

    @inlineCallbacks
    def test_resentIdNotHandedAgain(self) -> Any:
        """
        An id sent again by the same client is acked again but not handed
        to the handler again.
        """
        c, _ = yield self.hello()
        c.frame(t="m", id=7, d="none")
        self.assertEqual((yield c.nextMessage()), {"t": "ack", "id": 7})
        c.frame(t="m", id=7, d="none")
        self.assertEqual((yield c.nextMessage()), {"t": "ack", "id": 7})
        self.assertEqual(len([e for e in self.recorder.events if e[0] == "received"]), 1)

    @inlineCallbacks
    def test_liveMessages(self) -> Any:
        """
        After the welcome, session and broadcast messages arrive numbered,
        each stream +1 per message; a plain tab of the session gets the
        plain frames.
        """
        c, welcome = yield self.hello()
        plain = yield connect(self, self.running.port, headers=cookieHeader(c))
        sid = self.sidOf(c)
        self.assertEqual(self.registry.send(sid, "one"), 2)
        self.assertEqual(self.registry.broadcast("all"), 2)
        self.assertEqual(self.registry.send(sid, "two"), 2)
        got = yield nextMessages(c, 3)
        self.assertEqual(
            got,
            [
                {"t": "m", "s": "s", "o": 1, "d": "one"},
                {"t": "m", "s": "b", "o": 1, "d": "all"},
                {"t": "m", "s": "s", "o": 2, "d": "two"},
            ],
        )
        self.assertEqual((yield nextMessages(plain, 3)), ["one", "all", "two"])

    @inlineCallbacks
    def test_nothingBeforeHello(self) -> Any:
        """
        Before the hello is answered, stream messages do not go out (nor
        count as delivered); replies do.
        """
        c = yield self.connect()
        sid = self.sidOf(c)
        self.assertEqual(self.registry.send(sid, "early"), 0)
        self.assertEqual(self.registry.broadcast("early"), 0)
        self.registry.connections(sid)[0].send("a reply")
        self.assertEqual((yield c.nextMessage()), {"t": "r", "d": "a reply"})
        c.frame(t="hello", client=CLIENT)
        welcome = yield c.nextMessage()
        self.assertEqual((welcome["recovered"], welcome["s"][1], welcome["b"][1]), (False, 0, 1))
        self.registry.broadcast("late")
        self.assertEqual((yield c.nextMessage()), {"t": "m", "s": "b", "o": 2, "d": "late"})


class ResumeTests(Base):
    """
    A client coming back with its positions.
    """

    @inlineCallbacks
    def test_gapReplayed(self) -> Any:
        """
        The messages of both streams missed while away are replayed after
        the welcome, in order, then live messages follow.
        """
        c, welcome = yield self.hello()
        sid = self.sidOf(c)
        self.registry.send(sid, "seen")
        self.assertEqual((yield c.nextMessage())["o"], 1)
        c.sendClose(1000)
        yield c.closed
        yield waitFor(lambda: sid not in self.registry)
        self.registry.send(sid, "missed 1")
        self.registry.broadcast("missed b")
        self.registry.send(sid, "missed 2")
        resume = {"s": [welcome["s"][0], 1], "b": welcome["b"]}
        c2, welcome2 = yield self.hello(cookieHeader(c), resume=resume)
        self.assertEqual(
            welcome2, {"t": "welcome", "recovered": True, "s": [welcome["s"][0], 3], "b": [welcome["b"][0], 1]}
        )
        got = yield nextMessages(c2, 3)
        self.assertEqual(
            got,
            [
                {"t": "m", "s": "s", "o": 2, "d": "missed 1"},
                {"t": "m", "s": "s", "o": 3, "d": "missed 2"},
                {"t": "m", "s": "b", "o": 1, "d": "missed b"},
            ],
        )
        self.registry.send(sid, "live")
        self.assertEqual((yield c2.nextMessage()), {"t": "m", "s": "s", "o": 4, "d": "live"})


class HostileTests(Base):
    """
    Frames that break the protocol close the connection with their code;
    the session's other connections are untouched.
    """

    argv = Base.argv + ["--handshake-timeout", "1"]

    @inlineCallbacks
    def closedWith(self, frames: List[Any], code: int, hello: bool = True) -> Any:
        c = yield self.connect()
        other = yield self.connect(cookieHeader(c))
        other.frame(t="hello", client="other-tab")
        yield other.nextMessage()
        if hello:
            c.frame(t="hello", client=CLIENT)
            yield c.nextMessage()
        for frame in frames:
            if isinstance(frame, bytes):
                c.send(frame)
            elif isinstance(frame, str):
                c.send(frame)
            else:
                c.frame(**frame)
        closed = yield c.closed
        self.assertEqual(closed[0], code, (frames, closed))
        other.frame(t="m", id=1, d="echo still here")
        self.assertEqual((yield other.nextMessage()), {"t": "r", "d": "echo: still here"})
        self.assertEqual(len(self.registry.connections(self.sidOf(c))), 1)

    def test_malformedJson(self) -> Any:
        """
        Malformed JSON: 1007.
        """
        return self.closedWith(["{not json"], 1007)

    def test_notAnObject(self) -> Any:
        """
        JSON that is not an object: 1002.
        """
        return self.closedWith(["[1, 2]"], 1002)

    def test_unknownType(self) -> Any:
        """
        An unknown C{t}: 1002.
        """
        return self.closedWith([{"t": "subscribe"}], 1002)

    def test_secondHello(self) -> Any:
        """
        A second hello: 1002.
        """
        return self.closedWith([{"t": "hello", "client": CLIENT}], 1002)

    def test_messageBeforeHello(self) -> Any:
        """
        Anything but hello first: 1002.
        """
        return self.closedWith([{"t": "m", "id": 1, "d": "x"}], 1002, hello=False)

    def test_binaryFrame(self) -> Any:
        """
        A binary frame: 1003.
        """
        return self.closedWith([b"\x00\x01"], 1003)

    def test_badIds(self) -> Any:
        """
        An id that is not a positive integer: 1002.
        """
        bad = [0, -1, "1", 1.5, True, None, 2**53]
        return self._each([[{"t": "m", "id": i, "d": "x"}] for i in bad], 1002)

    def test_badData(self) -> Any:
        """
        C{d} that is not a string, or bad base64: 1002.
        """
        return self._each([[{"t": "m", "id": 1, "d": 5}], [{"t": "m", "id": 1, "b64": "!!"}]], 1002)

    def test_badHellos(self) -> Any:
        """
        Client ids too short, too long or with other characters, and
        positions that are not [epoch, offset] (offsets as strings or
        negative): 1002.
        """
        pos = ["e", 0]
        hellos: List[Dict[str, Any]] = [
            {"client": "short"},
            {"client": "x" * 65},
            {"client": "bad id!!"},
            {"client": 12345678},
            {"client": CLIENT, "resume": {"s": ["e", "1"], "b": pos}},
            {"client": CLIENT, "resume": {"s": pos, "b": ["e", -1]}},
            {"client": CLIENT, "resume": {"s": pos}},
            {"client": CLIENT, "resume": [pos, pos]},
            {"client": CLIENT, "resume": {"s": ["e" * 200, 0], "b": pos}},
        ]
        return self._each([[dict(t="hello", **h)] for h in hellos], 1002, hello=False)

    def test_oversizedHello(self) -> Any:
        """
        A hello over the message size limit: 1009.
        """
        return self.closedWith([json.dumps({"t": "hello", "client": CLIENT, "pad": "x" * 70000})], 1009, hello=False)

    @inlineCallbacks
    def _each(self, cases: List[List[Any]], code: int, hello: bool = True) -> Any:
        for frames in cases:
            yield self.closedWith(frames, code, hello)

    @inlineCallbacks
    def test_noHelloInTime(self) -> Any:
        """
        No hello within the handshake timeout: 1002.
        """
        c = yield self.connect()
        closed = yield c.closed
        self.assertEqual(closed[0], 1002)


class DedupeTests(Base):
    """
    Client message ids: per client of a session, within the window.
    """

    def received(self) -> List[Any]:
        return [e[3] for e in self.recorder.events if e[0] == "received"]

    @inlineCallbacks
    def test_floodOfRepeatedIds(self) -> Any:
        """
        A flood of one id: each acked, the handler given it once, the
        connection kept.
        """
        c, _ = yield self.hello()
        for _ in range(2000):
            c.frame(t="m", id=1, d="none")
        acks = yield nextMessages(c, 2000)
        self.assertEqual(acks, [{"t": "ack", "id": 1}] * 2000)
        self.assertEqual(self.received(), ["none"])
        self.assertEqual(len(self.registry.connections(self.sidOf(c))), 1)

    @inlineCallbacks
    def test_twoTabsTwoClients(self) -> Any:
        """
        Two tabs of a session are two clients: the same id from each is
        handed to the handler twice.
        """
        one, _ = yield self.hello()
        two, _ = yield self.hello(cookieHeader(one), client="tab-0002")
        one.frame(t="m", id=1, d="none")
        two.frame(t="m", id=1, d="none")
        yield one.nextMessage()
        yield two.nextMessage()
        self.assertEqual(self.received(), ["none", "none"])

    @inlineCallbacks
    def test_sameClientAfterReconnect(self) -> Any:
        """
        The same client on a new connection: an id it sent before is
        acked, not handed again.
        """
        one, _ = yield self.hello()
        one.frame(t="m", id=5, d="none")
        yield one.nextMessage()
        one.sendClose(1000)
        yield one.closed
        again, _ = yield self.hello(cookieHeader(one))
        again.frame(t="m", id=5, d="none")
        self.assertEqual((yield again.nextMessage()), {"t": "ack", "id": 5})
        self.assertEqual(self.received(), ["none"])

    @inlineCallbacks
    def test_forgottenAfterTtl(self) -> Any:
        """
        A client that has had no connection for the history ttl is
        forgotten: its ids count as new.
        """
        clock = Clock()
        assert self.registry.history is not None
        self.registry.history.clock = clock
        self.registry.clock = clock
        one, _ = yield self.hello()
        keep, _ = yield self.hello(cookieHeader(one), client="tab-keeps")
        one.frame(t="m", id=5, d="none")
        yield one.nextMessage()
        one.sendClose(1000)
        yield one.closed
        yield waitFor(lambda: len(self.registry.connections(self.sidOf(one))) == 1)
        clock.advance(120)
        again, _ = yield self.hello(cookieHeader(one))
        again.frame(t="m", id=5, d="none")
        yield again.nextMessage()
        self.assertEqual(self.received(), ["none", "none"])

    @inlineCallbacks
    def test_anotherSessionsEpoch(self) -> Any:
        """
        Resuming with another session's stream position: not recovered,
        nothing of the other session replayed.
        """
        mine, welcome = yield self.hello()
        theirs, theirWelcome = yield self.hello(client="tab-other")
        self.registry.send(self.sidOf(theirs), "private")
        yield theirs.nextMessage()
        resume = {"s": [theirWelcome["s"][0], 0], "b": welcome["b"]}
        again, welcome2 = yield self.hello(cookieHeader(mine), client="tab-again", resume=resume)
        self.assertFalse(welcome2["recovered"])
        self.registry.send(self.sidOf(mine), "mine")
        self.assertEqual((yield again.nextMessage()), {"t": "m", "s": "s", "o": 1, "d": "mine"})


class CountersTests(Base):
    """
    The daemon's counters of resumes and protocol errors.
    """

    @inlineCallbacks
    def test_counted(self) -> Any:
        """
        A resume is counted as recovered or not; a protocol error as one.
        """
        counters = self.running.factory.counters
        c, welcome = yield self.hello()
        yield self.hello(cookieHeader(c), client="tab-0002", resume={"s": welcome["s"], "b": welcome["b"]})
        yield self.hello(cookieHeader(c), client="tab-0003", resume={"s": ["gone", 0], "b": welcome["b"]})
        bad = yield self.connect()
        bad.send("{")
        yield bad.closed
        self.assertEqual(
            (counters["resumes:true"], counters["resumes:false"], counters["v1_protocol_errors"]),
            (1, 1, 1),
        )
