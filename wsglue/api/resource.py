"""
The routes of the API (L{ApiResource}, under C{/api/}): bearer keys,
methods, bodies and their types, then the call itself through a
L{wsglue.api.delivery.LocalDelivery}.

Every answer is JSON; every error is C{{"error": "..."}} with its status.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from wsglue.api.delivery import Delivered, LocalDelivery
from wsglue.api.http import errorBody
from wsglue.api.idempotency import KeyInUse, scopedKey
from wsglue.counters import Counters

_log = Logger()

SID = re.compile(r"^[0-9a-f]{40}$")
# The most messages in one batch, and sessions in one page.
MAX_BATCH = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
# Close codes an application may ask for (RFC 6455: 1000, and 3000-4999
# for libraries and applications).
CLOSE_CODES = "1000 or 3000-4999"
MAX_REASON_BYTES = 123
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_KEY = re.compile(r"^[!-~]{1,%d}$" % MAX_IDEMPOTENCY_KEY)


class ApiError(Exception):
    """
    An answer other than 200: its status and what is wrong, plus headers.
    """

    def __init__(self, status: int, message: str, headers: Optional[Dict[bytes, bytes]] = None) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Route:
    """
    A path pattern (C{/api/sessions/{sid}}, C{{sid}} being one segment) and
    what each of its methods calls.
    """

    def __init__(self, template: str, methods: Dict[bytes, Callable[..., Any]], public: bool = False) -> None:
        self.template = template
        self.methods = methods
        self.public = public
        pattern = re.escape(template).replace(r"\{sid\}", "(?P<sid>[^/]*)")
        self._pattern = re.compile(f"^{pattern}$")

    def match(self, path: str) -> Optional[Dict[str, str]]:
        m = self._pattern.match(path)
        return None if m is None else m.groupdict()

    @property
    def allow(self) -> bytes:
        names = sorted(m.decode("ascii") for m in self.methods)
        if "GET" in names:
            names.append("HEAD")
        return ", ".join(names).encode("ascii")


def routeOf(routes: Sequence[Route], path: Optional[bytes]) -> str:
    """
    The template of the route C{path} (with or without a query) falls
    under, for the metrics' C{route} label: never the path itself, whose
    session ids would make a label value per session.
    """
    if path is None:
        return "other"
    text = path.split(b"?", 1)[0].decode("latin-1")
    for route in routes:
        if route.match(text) is not None:
            return route.template
    return "other"


class ApiResource(Resource):
    """
    C{/api/...}: routes the request, checks the bearer key, and answers.

    @param keys: the bearer keys (any may be used).
    @param delivery: what sends, closes and lists.
    @param maxMessageSize: the most bytes of one message (0: no bound
        beyond the body's).
    @param idempotency: where C{Idempotency-Key} answers are kept.
    @param openapi: the OpenAPI document's bytes, served without a key.
    """

    isLeaf = True

    def __init__(
        self,
        keys: Iterable[bytes],
        delivery: LocalDelivery,
        counters: Counters,
        idempotency: Any,
        openapi: Callable[[], bytes],
        maxMessageSize: int = 0,
        stats: Optional[Callable[[], Dict[str, Any]]] = None,
    ) -> None:
        Resource.__init__(self)
        self.keys = [k if isinstance(k, bytes) else k.encode("utf-8") for k in keys]
        self.delivery = delivery
        self.counters = counters
        self.idempotency = idempotency
        self.openapi = openapi
        self.maxMessageSize = maxMessageSize
        self.stats = stats
        self.routes = [
            Route("/api/sessions/{sid}/messages", {b"POST": self.postMessage}),
            Route("/api/broadcast", {b"POST": self.postBroadcast}),
            Route("/api/batch", {b"POST": self.postBatch}),
            Route("/api/sessions", {b"GET": self.getSessions}),
            Route("/api/sessions/{sid}", {b"GET": self.getSession, b"DELETE": self.deleteSession}),
            Route("/api/stats", {b"GET": self.getStats}),
            Route("/api/openapi.json", {b"GET": self.getOpenAPI}, public=True),
        ]

    # -- answering -------------------------------------------------------------

    def render(self, request: Any) -> Any:
        path = request.path.decode("latin-1")
        for route in self.routes:
            params = route.match(path)
            if params is not None:
                break
        else:
            return self._error(request, "other", ApiError(404, "no such resource"))
        method = b"GET" if request.method == b"HEAD" else request.method
        call = route.methods.get(method)
        if call is None:
            allow = route.allow
            return self._error(request, route.template, ApiError(405, "method not allowed", {b"Allow": allow}))
        if not route.public and not self.authorized(request):
            return self._error(
                request,
                route.template,
                ApiError(401, "a valid bearer key is required", {b"WWW-Authenticate": b"Bearer"}),
            )
        d = defer.maybeDeferred(self._idempotent, request, method, call, params)
        d.addCallbacks(
            self._answer, self._failed, callbackArgs=(request, route.template), errbackArgs=(request, route.template)
        )
        return NOT_DONE_YET

    def authorized(self, request: Any) -> bool:
        """
        Whether the request carries C{Authorization: Bearer KEY} with one of
        the keys, compared in constant time with each of them.
        """
        header = _header(request, b"authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        candidate = given.strip().encode("latin-1")
        found = False
        for key in self.keys:
            # Every key is compared, so the time taken does not say which.
            found |= hmac.compare_digest(candidate, key)
        return found

    @defer.inlineCallbacks
    def _idempotent(self, request: Any, method: bytes, call: Callable[..., Any], params: Dict[str, str]) -> Any:
        """
        Call C{call}, unless the request's C{Idempotency-Key} was answered
        already: then the first answer again.
        """
        header = _header(request, b"idempotency-key")
        if header is None or method not in (b"POST", b"DELETE"):
            result = yield call(request, **params)
            return 200, result
        if not IDEMPOTENCY_KEY.match(header):
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")
        body = request.content.read()
        request.content.seek(0)
        kind = (_header(request, b"content-type") or "").encode("latin-1")
        key = scopedKey(method, request.uri, kind, body, header)
        try:
            first = yield self.idempotency.claim(key)
        except KeyInUse:
            raise ApiError(409, "a request with this Idempotency-Key is still being answered")
        except Exception as e:
            raise ApiError(503, f"Idempotency-Key cannot be checked now: {e}")
        if first is not None:
            request.setHeader(b"Idempotent-Replayed", b"true")
            return first[0], first[1]
        try:
            result = yield call(request, **params)
        except BaseException:
            yield self.idempotency.release(key).addErrback(lambda f: None)
            raise
        body = _json(result)
        yield self.idempotency.keep(key, (200, body)).addErrback(lambda f: None)
        return 200, body

    def _answer(self, result: Tuple[int, Any], request: Any, route: str) -> None:
        status, body = result
        if not isinstance(body, bytes):
            body = _json(body)
        self._finish(request, route, status, body)

    def _failed(self, failure: Failure, request: Any, route: str) -> None:
        if isinstance(failure.value, ApiError):
            error = failure.value
        else:
            _log.failure("the API failed to answer {method} {path}", failure, method=request.method, path=request.path)
            error = ApiError(500, "internal error")
        self._error(request, route, error)

    def _error(self, request: Any, route: str, error: ApiError) -> Any:
        for name, value in error.headers.items():
            request.setHeader(name, value)
        self._finish(request, route, error.status, errorBody(error.message))
        return NOT_DONE_YET

    def _finish(self, request: Any, route: str, status: int, body: bytes) -> None:
        self.counters.add(f"api_requests:{route}:{status}")
        if request._disconnected or request.finished:
            return
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    # -- the calls -------------------------------------------------------------

    def postMessage(self, request: Any, sid: str) -> Deferred:
        _checkSid(sid)
        message = self._message(request)
        d = self.delivery.send(sid, message)
        return d.addCallback(_delivered)

    def postBroadcast(self, request: Any) -> Deferred:
        message = self._message(request)
        d = self.delivery.broadcast(message)
        return d.addCallback(_delivered)

    @defer.inlineCallbacks
    def postBatch(self, request: Any) -> Any:
        items = self._batch(request)
        # Every message is handed over, in order, before any answer is
        # awaited, as consecutive registry.send calls are: with --redis they
        # go down the one command connection in that order, without a round
        # trip to Redis between one and the next (awaiting each made a
        # batch of 1,000 take 1,000 round trips).
        sends = [self.delivery.broadcast(data) if sid is None else self.delivery.send(sid, data) for sid, data in items]
        try:
            done = yield defer.gatherResults(sends, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        return {"results": [_delivered(d) for d in done]}

    @defer.inlineCallbacks
    def getSessions(self, request: Any) -> Any:
        limit = _intArg(request, b"limit", DEFAULT_PAGE, 1, MAX_PAGE)
        cursor = _arg(request, b"cursor")
        if cursor is not None and not SID.match(cursor):
            raise ApiError(400, "cursor must be the next value of a previous page")
        try:
            ids = yield self.delivery.sessions()
        except Exception as e:
            raise ApiError(503, f"the sessions cannot be listed now: {e}")
        if cursor is not None:
            ids = [sid for sid in ids if sid > cursor]
        page = ids[:limit]
        more = len(ids) > limit
        return {
            "sessions": [{"id": sid, "connections": self.delivery.connections(sid)} for sid in page],
            "next": page[-1] if more and page else None,
        }

    @defer.inlineCallbacks
    def getSession(self, request: Any, sid: str) -> Any:
        _checkSid(sid)
        try:
            online = yield self.delivery.online(sid)
        except Exception as e:
            raise ApiError(503, f"the session cannot be looked up now: {e}")
        if not online:
            raise ApiError(404, "no such session (it has no connection)")
        return {"id": sid, "connections": self.delivery.connections(sid), "online": True}

    def deleteSession(self, request: Any, sid: str) -> Deferred:
        _checkSid(sid)
        code = _intArg(request, b"code", 1000, 0, 65535, f"code must be {CLOSE_CODES}")
        if code != 1000 and not 3000 <= code <= 4999:
            raise ApiError(400, f"code must be {CLOSE_CODES}")
        reason = _arg(request, b"reason") or ""
        if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise ApiError(400, f"reason must be at most {MAX_REASON_BYTES} bytes of UTF-8")
        d = self.delivery.close(sid, code, reason)
        return d.addCallback(lambda n: {"closed": n})

    def getStats(self, request: Any) -> Dict[str, Any]:
        if self.stats is not None:
            return self.stats()
        from wsglue.api.stats import statsOf

        return statsOf(self.counters, self.delivery.registry)

    def getOpenAPI(self, request: Any) -> bytes:
        return self.openapi()

    # -- bodies ------------------------------------------------------------------

    def _message(self, request: Any) -> Any:
        """
        The message a body carries: C{text/plain} (UTF-8) as text,
        C{application/octet-stream} as binary.
        """
        kind, charset = _contentType(request)
        body = request.content.read()
        if kind == "text/plain":
            if charset not in (None, "utf-8", "utf8"):
                raise ApiError(415, "text/plain must be UTF-8")
            try:
                return body.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "the body is not valid UTF-8")
        if kind == "application/octet-stream":
            return body
        raise ApiError(415, "the body must be text/plain or application/octet-stream")

    def _batch(self, request: Any) -> List[Tuple[Optional[str], str]]:
        """
        The messages of a batch body, all checked before any is sent.
        """
        kind, _ = _contentType(request)
        if kind != "application/json":
            raise ApiError(415, "the body must be application/json")
        try:
            body = json.loads(request.content.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the body is not valid JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            raise ApiError(400, 'the body must be {"messages": [...]}')
        if len(messages) > MAX_BATCH:
            raise ApiError(413, f"a batch holds at most {MAX_BATCH} messages, not {len(messages)}")
        items: List[Tuple[Optional[str], str]] = []
        for i, item in enumerate(messages):
            if not isinstance(item, dict) or set(item) - {"session", "data"} or "data" not in item:
                raise ApiError(400, f'messages[{i}] must be {{"session": ID or null, "data": TEXT}}')
            sid, data = item.get("session"), item["data"]
            if sid is not None and not (isinstance(sid, str) and SID.match(sid)):
                raise ApiError(400, f"messages[{i}].session must be 40 lowercase hex characters or null")
            if not isinstance(data, str):
                raise ApiError(400, f"messages[{i}].data must be a string")
            if self.maxMessageSize and len(data.encode("utf-8", "surrogatepass")) > self.maxMessageSize:
                raise ApiError(413, f"messages[{i}].data is more than {self.maxMessageSize} bytes")
            try:
                data.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, f"messages[{i}].data is not valid Unicode")
            items.append((sid, data))
        return items


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _delivered(done: Delivered) -> Dict[str, Any]:
    return {"delivered": done.delivered, "offset": done.offset, "epoch": done.epoch}


def _checkSid(sid: str) -> None:
    if not SID.match(sid):
        raise ApiError(400, "a session id is 40 lowercase hex characters")


def _header(request: Any, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    return None if value is None else str(value.decode("latin-1"))


def _contentType(request: Any) -> Tuple[Optional[str], Optional[str]]:
    header = _header(request, b"content-type")
    if header is None:
        return None, None
    kind, *params = header.split(";")
    charset = None
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset":
            charset = value.strip().strip('"').lower()
    return kind.strip().lower(), charset


def _arg(request: Any, name: bytes) -> Optional[str]:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return str(values[-1].decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, f"{name.decode()} is not valid UTF-8")


def _intArg(request: Any, name: bytes, default: int, least: int, most: int, problem: str = "") -> int:
    text = _arg(request, name)
    if text is None:
        return default
    if not text.isdigit() or not text.isascii() or len(text) > 9 or not least <= int(text) <= most:
        raise ApiError(400, problem or f"{name.decode()} must be a whole number from {least} to {most}")
    return int(text)
