"""
Tests for the HTTP API (C{--api}): every call against a real service on
loopback, delivery to the right tabs, the errors with their JSON bodies,
the keys, idempotency (in one process and across two on one Redis), and
hostile requests (huge and slow bodies, bad UTF-8, bad ids, too big a
batch, wrong methods, no key).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.api_client import KEYS, keyFile, serveApi
from tests.common import connect, cookieValue, freePort, options, rawConnect, spawnDaemon, waitFor
from tests.redis_server import startRedis
from wsglue.api.idempotency import KeyInUse, MemoryKeys

SID_X = "f" * 40


@inlineCallbacks
def session(testCase: Any, port: int, tabs: int = 1) -> Any:
    """
    Open C{tabs} WebSockets of one new session; fire with (sid, [clients]).
    """
    first = yield connect(testCase, port)
    sid = cookieValue(first.setCookie)
    clients = [first]
    for _ in range(tabs - 1):
        clients.append((yield connect(testCase, port, headers={"Cookie": f"CookieName={sid}"})))
    return sid, clients


class OptionTests(SynchronousTestCase):
    """
    C{--api} and C{--api-key-file} are checked while the options are parsed.
    """

    def error(self, *argv: str) -> str:
        return str(self.assertRaises(UsageError, options, *argv))

    def test_offByDefault(self) -> None:
        """
        Without C{--api} there is no API and no key.
        """
        o = options()
        self.assertIsNone(o["api"])
        self.assertEqual(o["api-keys"], [])

    def test_keysRead(self) -> None:
        """
        Keys are one a line; blank lines are ignored.
        """
        o = options("--api", "tcp:0", "--api-key-file", keyFile(self))
        self.assertEqual(o["api-keys"], [k.encode() for k in KEYS])

    def test_keyFileRequired(self) -> None:
        """
        C{--api} without C{--api-key-file} is refused.
        """
        self.assertIn("--api requires --api-key-file", self.error("--api", "tcp:0"))

    def test_keyFileAlone(self) -> None:
        """
        C{--api-key-file} without C{--api} is refused.
        """
        self.assertIn("only used with --api", self.error("--api-key-file", keyFile(self)))

    def test_emptyKeyFile(self) -> None:
        """
        A key file with only blank lines is one clear error.
        """
        message = self.error("--api", "tcp:0", "--api-key-file", keyFile(self, text="\n  \n"))
        self.assertIn("--api-key-file", message)
        self.assertIn("holds no key", message)

    def test_missingKeyFile(self) -> None:
        """
        A key file that does not exist is one clear error.
        """
        message = self.error("--api", "tcp:0", "--api-key-file", "/nonexistent/keys")
        self.assertIn("--api-key-file '/nonexistent/keys' does not exist", message)

    def test_unreadableKeyFile(self) -> None:
        """
        A key file readable by every user is refused (the keys are secrets).
        """
        path = keyFile(self)
        os.chmod(path, 0o644)
        self.assertIn("readable by every user", self.error("--api", "tcp:0", "--api-key-file", path))

    def test_badEndpoint(self) -> None:
        """
        A C{--api} that is not an endpoint is one clear error.
        """
        message = self.error("--api", "nonsense:1", "--api-key-file", keyFile(self))
        self.assertIn("--api 'nonsense:1' is not a valid endpoint", message)
        message = self.error("--api", "tcp:70000", "--api-key-file", keyFile(self))
        self.assertIn("port number must be from 0 to 65535", message)

    def test_workersNeedTcp(self) -> None:
        """
        With C{--workers} over 1, C{--api} must be a TCP endpoint (the
        workers share its socket).
        """
        message = self.error(
            "--api",
            "unix:/tmp/wsglue-api.sock",
            "--api-key-file",
            keyFile(self),
            "--workers",
            "2",
            "--redis",
            "redis://127.0.0.1:1/0",
        )
        self.assertIn("--workers 2 > 1 needs a tcp: --api, not 'unix:/tmp/wsglue-api.sock'", message)
        o = options(
            "--api", "tcp:0", "--api-key-file", keyFile(self), "--workers", "2", "--redis", "redis://127.0.0.1:1/0"
        )
        self.assertEqual(o["workers"], 2)


class CallTests(TestCase):
    """
    Every call of the API against a real service on loopback.
    """

    timeout = 30

    def setUp(self) -> None:
        self.api = serveApi(self)

    @inlineCallbacks
    def test_sendText(self) -> Any:
        """
        A text/plain body goes as a text frame to every tab of the session
        and to no other; the answer counts the tabs reached.
        """
        sid, tabs = yield session(self, self.api.port, tabs=2)
        _, (other,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json("POST", f"/api/sessions/{sid}/messages", "héllo")
        self.assertEqual((status, body), (200, {"delivered": 2, "offset": None, "epoch": None}))
        for tab in tabs:
            self.assertEqual((yield tab.nextMessage()), "héllo")
        self.assertEqual(other.messages.pending, [])

    @inlineCallbacks
    def test_sendBinary(self) -> Any:
        """
        An application/octet-stream body goes as a binary frame.
        """
        sid, (tab,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json(
            "POST", f"/api/sessions/{sid}/messages", b"\x00\xff\x80", contentType="application/octet-stream"
        )
        self.assertEqual(body["delivered"], 1)
        self.assertEqual((yield tab.nextMessage()), b"\x00\xff\x80")

    @inlineCallbacks
    def test_sendUnknownSession(self) -> Any:
        """
        A session without a connection: 200, nothing delivered.
        """
        status, body, _ = yield self.api.json("POST", f"/api/sessions/{SID_X}/messages", "x")
        self.assertEqual((status, body["delivered"]), (200, 0))

    @inlineCallbacks
    def test_charsetUtf8(self) -> Any:
        """
        C{text/plain; charset=utf-8} is text; another charset is 415.
        """
        sid, (tab,) = yield session(self, self.api.port)
        status, _, _ = yield self.api.json(
            "POST", f"/api/sessions/{sid}/messages", "a", contentType="text/plain; charset=UTF-8"
        )
        self.assertEqual(status, 200)
        status, body, _ = yield self.api.json(
            "POST", f"/api/sessions/{sid}/messages", "a", contentType="text/plain; charset=latin-1"
        )
        self.assertEqual(status, 415)

    @inlineCallbacks
    def test_broadcast(self) -> Any:
        """
        A broadcast reaches every connection of every session.
        """
        _, tabs = yield session(self, self.api.port, tabs=2)
        _, (other,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json("POST", "/api/broadcast", "all")
        self.assertEqual((status, body["delivered"], body["offset"]), (200, 3, 1))
        self.assertIsInstance(body["epoch"], str)
        for client in tabs + [other]:
            self.assertEqual((yield client.nextMessage()), "all")
        # The next one is numbered after it, in the same broadcast stream.
        status, again, _ = yield self.api.json("POST", "/api/broadcast", "again")
        self.assertEqual((again["offset"], again["epoch"]), (2, body["epoch"]))

    @inlineCallbacks
    def test_batch(self) -> Any:
        """
        A batch is delivered in order, each message to its session or to
        all; the results are in the same order.
        """
        sidA, (a,) = yield session(self, self.api.port)
        sidB, (b,) = yield session(self, self.api.port)
        batch = {
            "messages": [
                {"session": sidA, "data": "1"},
                {"session": None, "data": "2"},
                {"session": sidB, "data": "3"},
                {"session": SID_X, "data": "4"},
            ]
        }
        status, body, _ = yield self.api.json("POST", "/api/batch", batch)
        self.assertEqual(status, 200)
        self.assertEqual([r["delivered"] for r in body["results"]], [1, 2, 1, 0])
        # Sessions whose tabs are all plain have no stream in one process;
        # the broadcast stream numbers the broadcast.
        self.assertEqual([r["offset"] for r in body["results"]], [None, 1, None, None])
        self.assertEqual([(yield a.nextMessage()), (yield a.nextMessage())], ["1", "2"])
        self.assertEqual([(yield b.nextMessage()), (yield b.nextMessage())], ["2", "3"])

    @inlineCallbacks
    def test_batchOf1001(self) -> Any:
        """
        A batch of more than 1,000 messages is refused with 413 and nothing
        is sent.
        """
        _, (tab,) = yield session(self, self.api.port)
        batch = {"messages": [{"session": None, "data": ""}] * 1001}
        status, body, _ = yield self.api.json("POST", "/api/batch", batch)
        self.assertEqual(status, 413)
        self.assertIn("at most 1000", body["error"])
        status, body, _ = yield self.api.json(
            "POST", "/api/batch", {"messages": [{"session": None, "data": ""}] * 1000}
        )
        self.assertEqual(status, 200)
        self.assertEqual(len(body["results"]), 1000)

    @inlineCallbacks
    def test_batchMalformed(self) -> Any:
        """
        A batch that is not JSON, not of the right shape, or holds a bad id
        is 400, and none of it is sent; a body that is not JSON's type 415.
        """
        sid, (tab,) = yield session(self, self.api.port)
        for body in (
            b"{",
            b"[]",
            b'{"messages": {}}',
            json.dumps({"messages": [{"session": sid, "data": "ok"}, {"session": "ABC", "data": "x"}]}).encode(),
            json.dumps({"messages": [{"session": sid, "data": 5}]}).encode(),
            json.dumps({"messages": [{"data": "x", "extra": 1}]}).encode(),
        ):
            status, answer, _ = yield self.api.json("POST", "/api/batch", body, contentType="application/json")
            self.assertEqual(status, 400, body)
            self.assertIsInstance(answer["error"], str)
        status, _, _ = yield self.api.json("POST", "/api/batch", "{}", contentType="text/plain")
        self.assertEqual(status, 415)
        self.assertEqual(tab.messages.pending, [])

    @inlineCallbacks
    def test_listSessions(self) -> Any:
        """
        Sessions are listed in a stable order, a page at a time; C{next} is
        the cursor of the following page, C{null} on the last.
        """
        sids = []
        for tabs in (1, 2, 1):
            sid, _ = yield session(self, self.api.port, tabs=tabs)
            sids.append(sid)
        status, first, _ = yield self.api.json("GET", "/api/sessions?limit=2")
        self.assertEqual(status, 200)
        self.assertEqual(len(first["sessions"]), 2)
        self.assertIsNotNone(first["next"])
        status, second, _ = yield self.api.json("GET", f"/api/sessions?limit=2&cursor={first['next']}")
        self.assertIsNone(second["next"])
        listed = first["sessions"] + second["sessions"]
        self.assertEqual([s["id"] for s in listed], sorted(sids))
        counts = {s["id"]: s["connections"] for s in listed}
        self.assertEqual([counts[sid] for sid in sids], [1, 2, 1])
        status, whole, _ = yield self.api.json("GET", "/api/sessions")
        self.assertEqual((whole["sessions"], whole["next"]), (listed, None))

    @inlineCallbacks
    def test_listBadArguments(self) -> Any:
        """
        A limit out of 1-1000 or a cursor that is no id: 400.
        """
        for query in ("limit=0", "limit=1001", "limit=x", "limit=-1", "cursor=zz"):
            status, body, _ = yield self.api.json("GET", f"/api/sessions?{query}")
            self.assertEqual(status, 400, query)

    @inlineCallbacks
    def test_getSession(self) -> Any:
        """
        A session with connections: its count and C{online}; one without
        any: 404.
        """
        sid, _ = yield session(self, self.api.port, tabs=2)
        status, body, _ = yield self.api.json("GET", f"/api/sessions/{sid}")
        self.assertEqual((status, body), (200, {"id": sid, "connections": 2, "online": True}))
        status, body, _ = yield self.api.json("GET", f"/api/sessions/{SID_X}")
        self.assertEqual(status, 404)
        self.assertIn("error", body)

    @inlineCallbacks
    def test_deleteSession(self) -> Any:
        """
        DELETE closes every tab of the session with the code and reason
        asked for, and no other.
        """
        sid, tabs = yield session(self, self.api.port, tabs=2)
        _, (other,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json("DELETE", f"/api/sessions/{sid}?code=4000&reason=bye%20now")
        self.assertEqual((status, body), (200, {"closed": 2}))
        for tab in tabs:
            self.assertEqual((yield tab.closed), (4000, "bye now"))
        self.assertFalse(other.closed.called)
        status, body, _ = yield self.api.json("DELETE", f"/api/sessions/{sid}")
        self.assertEqual((status, body), (200, {"closed": 0}))

    @inlineCallbacks
    def test_deleteDefaultCode(self) -> Any:
        """
        Without C{code}, 1000.
        """
        sid, (tab,) = yield session(self, self.api.port)
        yield self.api.json("DELETE", f"/api/sessions/{sid}")
        self.assertEqual((yield tab.closed)[0], 1000)

    @inlineCallbacks
    def test_deleteBadCode(self) -> Any:
        """
        A code other than 1000 or 3000-4999, or too long a reason: 400, and
        the session stays open.
        """
        sid, (tab,) = yield session(self, self.api.port)
        for query in ("code=1001", "code=2999", "code=5000", "code=abc", "code=", "reason=" + "x" * 124):
            status, body, _ = yield self.api.json("DELETE", f"/api/sessions/{sid}?{query}")
            self.assertEqual(status, 400, query)
            self.assertIn("error", body)
        self.assertFalse(tab.closed.called)

    @inlineCallbacks
    def test_openapi(self) -> Any:
        """
        The OpenAPI document is served without a key.
        """
        status, body, response = yield self.api.json("GET", "/api/openapi.json", key=None)
        self.assertEqual(status, 200)
        self.assertEqual(body["openapi"], "3.1.0")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])


class ErrorTests(TestCase):
    """
    Errors: their statuses, headers and JSON bodies; hostile requests.
    """

    timeout = 30

    def setUp(self) -> None:
        self.api = serveApi(self, "--max-message-size", "1000")

    @inlineCallbacks
    def test_noKey(self) -> Any:
        """
        Without a key, with a wrong one or another scheme: 401 with
        C{WWW-Authenticate: Bearer}, and nothing is sent.
        """
        sid, (tab,) = yield session(self, self.api.port)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"}):
            status, body, response = yield self.api.json(
                "POST", f"/api/sessions/{sid}/messages", "x", key=None, headers=headers
            )
            self.assertEqual(status, 401, headers)
            self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ["Bearer"])
            self.assertIn("error", body)
        for path in ("/api/sessions", f"/api/sessions/{sid}"):
            status, _, _ = yield self.api.json("GET", path, key=None)
            self.assertEqual(status, 401)
        self.assertEqual(tab.messages.pending, [])

    @inlineCallbacks
    def test_eitherKey(self) -> Any:
        """
        Either key of the file is accepted.
        """
        for key in KEYS:
            status, _, _ = yield self.api.json("GET", "/api/sessions", key=key)
            self.assertEqual(status, 200, key)

    @inlineCallbacks
    def test_notFound(self) -> Any:
        """
        A path the API does not have: 404 in JSON.
        """
        for path in ("/", "/api", "/api/nothing", "/api/sessions/a/b/c", "/elsewhere"):
            status, body, _ = yield self.api.json("GET", path)
            self.assertEqual(status, 404, path)
            self.assertIn("error", body)

    @inlineCallbacks
    def test_wrongMethod(self) -> Any:
        """
        A method a path does not have: 405 with C{Allow}.
        """
        for method, path, allow in (
            ("GET", f"/api/sessions/{SID_X}/messages", "POST"),
            ("PUT", "/api/broadcast", "POST"),
            ("GET", "/api/batch", "POST"),
            ("POST", "/api/sessions", "GET, HEAD"),
            ("PATCH", f"/api/sessions/{SID_X}", "DELETE, GET, HEAD"),
        ):
            status, body, response = yield self.api.json(method, path)
            self.assertEqual(status, 405, (method, path))
            self.assertEqual(response.headers.getRawHeaders("allow"), [allow])
            self.assertIn("error", body)

    @inlineCallbacks
    def test_nonHexSid(self) -> Any:
        """
        A session id that is not 40 lowercase hex characters: 400.
        """
        for sid in ("F" * 40, "f" * 39, "g" * 40, "f" * 40 + ".sig"):
            for method, path in (
                ("POST", f"/api/sessions/{sid}/messages"),
                ("GET", f"/api/sessions/{sid}"),
                ("DELETE", f"/api/sessions/{sid}"),
            ):
                status, body, _ = yield self.api.json(method, path, "x")
                self.assertEqual(status, 400, (method, path))

    @inlineCallbacks
    def test_badUtf8(self) -> Any:
        """
        A text/plain body that is not UTF-8: 400, nothing sent.
        """
        sid, (tab,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json("POST", f"/api/sessions/{sid}/messages", b"\xff\xfe")
        self.assertEqual(status, 400)
        self.assertIn("UTF-8", body["error"])
        self.assertEqual(tab.messages.pending, [])

    @inlineCallbacks
    def test_unsupportedType(self) -> Any:
        """
        A body of another type, or none said: 415.
        """
        for kind in ("application/json", "text/html", None):
            status, body, _ = yield self.api.json("POST", "/api/broadcast", "x", contentType=kind)
            self.assertEqual(status, 415, kind)
            self.assertIn("error", body)

    @inlineCallbacks
    def test_bodyOverLimit(self) -> Any:
        """
        A body over C{--max-message-size}: 413 in JSON; at the limit: sent.
        """
        sid, (tab,) = yield session(self, self.api.port)
        status, body, _ = yield self.api.json("POST", f"/api/sessions/{sid}/messages", "x" * 1001)
        self.assertEqual(status, 413)
        self.assertIn("error", body)
        status, body, _ = yield self.api.json("POST", f"/api/sessions/{sid}/messages", "x" * 1000)
        self.assertEqual(status, 200)
        self.assertEqual((yield tab.nextMessage()), "x" * 1000)

    @inlineCallbacks
    def test_hugeBodyRefusedEarly(self) -> Any:
        """
        A C{Content-Length} over the limit is answered 413 before a byte of
        the body is sent.
        """
        peer = yield rawConnect(self, self.api.apiPort)
        peer.transport.write(
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Authorization: Bearer " + KEYS[0].encode() + b"\r\nContent-Length: 10000000000\r\n\r\n"
        )
        received = yield peer.waitForBytes(b"}")
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)
        self.assertIn(b'{"error": "the body is 10000000000 bytes', received)
        self.assertEqual(self.api.counters["api_requests:/api/broadcast:413"], 1)

    @inlineCallbacks
    def test_chunkedBodyBounded(self) -> Any:
        """
        A chunked body is refused with 413 as soon as it passes the limit,
        without waiting for its end.
        """
        peer = yield rawConnect(self, self.api.apiPort)
        peer.transport.write(
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Authorization: Bearer " + KEYS[0].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            peer.transport.write(b"1f4\r\n" + b"x" * 500 + b"\r\n")
        received = yield peer.waitForBytes(b"}")
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)

    @inlineCallbacks
    def test_slowBody(self) -> Any:
        """
        A body that does not arrive whole within the request deadline: the
        connection is dropped, and the API goes on answering others.
        """
        self.api.api.site.handshakeTimeout = 0.3
        peer = yield rawConnect(self, self.api.apiPort)
        peer.transport.write(
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Authorization: Bearer " + KEYS[0].encode() + b"\r\nContent-Length: 10\r\n\r\nab"
        )
        yield peer.lost
        status, _, _ = yield self.api.json("GET", "/api/sessions")
        self.assertEqual(status, 200)


class IdempotencyTests(TestCase):
    """
    C{Idempotency-Key}: a repeat gets the first answer and delivers nothing.
    """

    timeout = 60

    @inlineCallbacks
    def test_repeatDeliversOnce(self) -> Any:
        """
        The same call with the same key twice: the same answer, one
        delivery; another key delivers again.
        """
        api = serveApi(self)
        sid, (tab,) = yield session(self, api.port)
        path = f"/api/sessions/{sid}/messages"
        first = yield api.json("POST", path, "once", headers={"Idempotency-Key": "k1"})
        again = yield api.json("POST", path, "once", headers={"Idempotency-Key": "k1"})
        self.assertEqual(first[:2], (200, {"delivered": 1, "offset": None, "epoch": None}))
        self.assertEqual(again[:2], first[:2])
        self.assertEqual(again[2].headers.getRawHeaders("idempotent-replayed"), ["true"])
        yield api.json("POST", path, "next", headers={"Idempotency-Key": "k2"})
        self.assertEqual((yield tab.nextMessage()), "once")
        self.assertEqual((yield tab.nextMessage()), "next")

    @inlineCallbacks
    def test_failureNotKept(self) -> Any:
        """
        An answer that is an error is not kept: the corrected call with the
        same key is carried out.
        """
        api = serveApi(self)
        sid, (tab,) = yield session(self, api.port)
        path = f"/api/sessions/{sid}/messages"
        status, _, _ = yield api.json("POST", path, b"\xff", headers={"Idempotency-Key": "k"})
        self.assertEqual(status, 400)
        status, body, _ = yield api.json("POST", path, "fixed", headers={"Idempotency-Key": "k"})
        self.assertEqual((status, body["delivered"]), (200, 1))
        self.assertEqual((yield tab.nextMessage()), "fixed")

    @inlineCallbacks
    def test_acrossProcesses(self) -> Any:
        """
        With C{--redis}, a repeat sent to another process on the same Redis
        gets the first answer and delivers nothing again; the counts cover
        the other process's connections.
        """
        redis = yield startRedis(self)
        a = serveApi(self, "--redis", redis.url)
        b = serveApi(self, "--redis", redis.url)
        sid, (tab,) = yield session(self, b.port)
        yield waitFor(lambda: b.registry._subscribed and a.registry._subscribed)
        yield _eventually(lambda: a.registry.hasSession(sid))
        path = f"/api/sessions/{sid}/messages"
        first = yield a.json("POST", path, "once", headers={"Idempotency-Key": "shared"})
        # With --redis every session send is numbered in its stream in Redis.
        self.assertEqual((first[0], first[1]["delivered"], first[1]["offset"]), (200, 1, 1))
        again = yield b.json("POST", path, "once", headers={"Idempotency-Key": "shared"})
        self.assertEqual(again[:2], first[:2])
        yield a.json("POST", path, "after")
        self.assertEqual((yield tab.nextMessage()), "once")
        self.assertEqual((yield tab.nextMessage()), "after")


class ClusterTests(TestCase):
    """
    With C{--redis} every call is cluster-wide.
    """

    timeout = 60

    @inlineCallbacks
    def test_clusterWide(self) -> Any:
        """
        Sends, broadcasts, listings, look-ups and closes made on one
        process reach the sessions of another.
        """
        redis = yield startRedis(self)
        a = serveApi(self, "--redis", redis.url)
        b = serveApi(self, "--redis", redis.url)
        sid, (tab,) = yield session(self, b.port)
        yield waitFor(lambda: b.registry._subscribed and a.registry._subscribed)
        yield _eventually(lambda: a.registry.hasSession(sid))
        status, body, _ = yield a.json("POST", f"/api/sessions/{sid}/messages", "to b")
        self.assertEqual(body["delivered"], 1)
        self.assertEqual((yield tab.nextMessage()), "to b")
        status, body, _ = yield a.json("POST", "/api/broadcast", "all")
        # The tab on b, counted as the one process that received it.
        self.assertEqual(body["delivered"], 1)
        self.assertEqual((yield tab.nextMessage()), "all")
        status, body, _ = yield a.json("GET", "/api/sessions")
        self.assertEqual(body["sessions"], [{"id": sid, "connections": None}])
        status, body, _ = yield a.json("GET", f"/api/sessions/{sid}")
        self.assertEqual((status, body["online"]), (200, True))
        status, body, _ = yield a.json("DELETE", f"/api/sessions/{sid}?code=4001")
        self.assertEqual(body, {"closed": 1})
        self.assertEqual((yield tab.closed)[0], 4001)
        status, body, _ = yield a.json("POST", f"/api/sessions/{SID_X}/messages", "nobody")
        self.assertEqual(body["delivered"], 0)


@inlineCallbacks
def _eventually(ask: Any, timeout: float = 10) -> Any:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from wsglue.cluster.link import RedisUnavailable

    for _ in range(int(timeout / 0.05)):
        try:
            if (yield ask()):
                return
        except RedisUnavailable:
            # The command connection may come up after the subscriber's.
            pass
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("never true")


class DaemonTests(TestCase):
    """
    C{twistd -n wsglue --api ...}: the API of a real daemon.
    """

    timeout = 60

    def args(self, apiPort: int) -> list:
        return [
            "--port",
            f"tcp:{freePort()}:interface=127.0.0.1",
            "--api",
            f"tcp:{apiPort}:interface=127.0.0.1",
            "--api-key-file",
            keyFile(self),
            "--broadcast-interval",
            "0",
        ]

    @inlineCallbacks
    def test_serves(self) -> Any:
        """
        The daemon says where the API listens and answers on it.
        """
        apiPort = freePort()
        daemon = spawnDaemon(self, self.args(apiPort))
        yield daemon.waitForOutput(f"started api server at http://127.0.0.1:{apiPort}")
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(
            b"GET",
            f"http://127.0.0.1:{apiPort}/api/sessions".encode(),
            Headers({"Authorization": [f"Bearer {KEYS[0]}"]}),
        )
        body = yield readBody(response)
        self.assertEqual((response.code, json.loads(body)), (200, {"sessions": [], "next": None}))

    @inlineCallbacks
    def test_portInUse(self) -> Any:
        """
        An API port that cannot be bound ends the daemon at once with one
        line naming it, exit status 1.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        apiPort = taken.getsockname()[1]
        daemon = spawnDaemon(self, self.args(apiPort))
        status = yield daemon.ended
        self.assertEqual(status, 1, daemon.output)
        self.assertIn(f"wsglue: cannot listen on --api tcp:{apiPort}:interface=127.0.0.1", daemon.output)
        self.assertNotIn("Traceback", daemon.output)


class WorkersTests(TestCase):
    """
    C{--workers N} with C{--api}: the parent binds the API's port once, the
    workers share it, and one scrape covers every worker.
    """

    timeout = 90

    @inlineCallbacks
    def test_sharedAndAddedUp(self) -> Any:
        """
        Two workers: every call works whichever worker answers, a broadcast
        reaches the connections of both, and each scrape counts the
        connections and handshakes of both.
        """
        redis = yield startRedis(self)
        port, apiPort = freePort(), freePort()
        daemon = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--api",
                f"tcp:{apiPort}:interface=127.0.0.1",
                "--api-key-file",
                keyFile(self),
                "--broadcast-interval",
                "0",
                "--workers",
                "2",
                "--redis",
                redis.url,
            ],
        )
        yield daemon.waitForOutput(f"started api server at http://127.0.0.1:{apiPort}")
        yield waitFor(lambda: daemon.output.count("accepting api requests at") == 2, timeout=30)
        # Until both workers hold some (the kernel hands each connection to
        # whichever worker accepts first).
        clients = []
        while len(clients) < 8 or len(set(re.findall(r"\[worker (\d+)\] session opened", daemon.output))) < 2:
            self.assertLess(len(clients), 60, "one worker took every connection")
            clients.append((yield connect(self, port)))
            yield waitFor(lambda: daemon.output.count("session opened") == len(clients))
        total = len(clients)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

        @inlineCallbacks
        def scrape() -> Any:
            response = yield agent.request(b"GET", f"http://127.0.0.1:{apiPort}/metrics".encode())
            body = yield readBody(response)
            samples = {}
            for family in text_string_to_metric_families(body.decode()):
                for sample in family.samples:
                    samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            return samples

        # The other worker's part is at most a second old: every scrape
        # (whichever worker answers it) soon counts them all.
        seen = []
        for _ in range(100):
            samples = yield scrape()
            seen.append(samples[("wsglue_connections", ())])
            if seen[-3:] == [total] * 3:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(seen[-3:], [total] * 3, seen)
        self.assertEqual(samples[("wsglue_handshakes_total", (("result", "accepted"),))], total)
        response = yield agent.request(
            b"POST",
            f"http://127.0.0.1:{apiPort}/api/broadcast".encode(),
            Headers({"Authorization": [f"Bearer {KEYS[0]}"], "Content-Type": ["text/plain"]}),
            FileBodyProducer(io.BytesIO(b"everyone")),
        )
        body = json.loads((yield readBody(response)))
        self.assertGreaterEqual(body["delivered"], 1)
        for client in clients:
            self.assertEqual((yield client.nextMessage()), "everyone")


class MemoryKeysTests(SynchronousTestCase):
    """
    Idempotency keys in memory.
    """

    def test_lifecycle(self) -> None:
        """
        A new key is claimed; while its answer is pending a repeat is
        refused (409 for the client); once kept, a repeat gets the answer;
        after the TTL the key is new again.
        """
        clock = Clock()
        keys = MemoryKeys(clock, ttl=300)
        self.assertIsNone(self.successResultOf(keys.claim("k")))
        self.failureResultOf(keys.claim("k"), KeyInUse)
        keys.keep("k", (200, b"{}"))
        self.assertEqual(self.successResultOf(keys.claim("k")), (200, b"{}"))
        clock.advance(301)
        self.assertIsNone(self.successResultOf(keys.claim("k")))

    def test_released(self) -> None:
        """
        A released key (its request failed) is new again.
        """
        keys = MemoryKeys(Clock())
        keys.claim("k")
        keys.release("k")
        self.assertIsNone(self.successResultOf(keys.claim("k")))

    def test_bounded(self) -> None:
        """
        Past the limit the oldest keys are forgotten.
        """
        keys = MemoryKeys(Clock(), limit=3)
        for name in "abcd":
            keys.claim(name)
            keys.keep(name, (200, name.encode()))
        keys.claim("e")
        self.assertIsNone(self.successResultOf(keys.claim("a")))
        self.assertEqual(self.successResultOf(keys.claim("d")), (200, b"d"))
