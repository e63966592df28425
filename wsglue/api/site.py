"""
The API's site: C{/api/...} (L{wsglue.api.resource.ApiResource}),
C{/metrics} when given, and a JSON 404 for anything else.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from wsglue.api.adminpage import AdminResource
from wsglue.api.delivery import deliveryFor
from wsglue.api.http import REQUEST_DEADLINE, ApiChannel, ApiRequest, errorBody
from wsglue.api.idempotency import MemoryKeys, RedisKeys
from wsglue.api.openapi import openapiBytes
from wsglue.api.resource import ApiResource, routeOf
from wsglue.counters import Counters
from wsglue.registry import SessionRegistry

# The bound on a body when --max-message-size is 0 (no bound on
# WebSocket messages): an HTTP body is read into memory whole.
UNBOUNDED_BODY = 16 * 1024 * 1024


class NotFound(Resource):
    """
    Any path that is not the API's: 404 with a JSON error.
    """

    isLeaf = True

    def __init__(self, counters: Counters) -> None:
        Resource.__init__(self)
        self.counters = counters

    def render(self, request: Any) -> bytes:
        self.counters.add("api_requests:other:404")
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"application/json")
        return errorBody("no such resource")


class ApiRoot(Resource):
    """
    The root of the API's site.
    """

    def __init__(self, api: ApiResource, metrics: Optional[IResource], counters: Counters) -> None:
        Resource.__init__(self)
        self.api = api
        self.metrics = metrics
        self.notFound = NotFound(counters)
        self.admin = AdminResource(counters)

    def getChild(self, name: bytes, request: Any) -> Any:
        if name == b"api":
            return self.api
        if name == b"metrics" and self.metrics is not None and not request.postpath:
            return self.metrics
        if name == b"admin":
            return self.admin
        return self.notFound

    def render(self, request: Any) -> bytes:
        return self.notFound.render(request)


class ApiSite(Site):
    """
    The L{Site} of the API: bodies bounded by C{maxBodySize}
    (L{ApiRequest}), each request due whole within C{handshakeTimeout}
    seconds (L{ApiChannel}).
    """

    protocol = ApiChannel  # type: ignore[assignment]
    requestFactory = ApiRequest
    maxBodySize = UNBOUNDED_BODY
    handshakeTimeout: Optional[float] = REQUEST_DEADLINE
    limits: Any = None
    api: ApiResource

    def log(self, request: Any) -> None:
        # No access log: a line per request would be the busiest thing in
        # the log; the metrics count the requests by route and status.
        pass

    def countRefused(self, path: Optional[bytes], status: int) -> None:
        """
        Count an answer given before its request was complete (413).
        """
        self.api.counters.add(f"api_requests:{routeOf(self.api.routes, path)}:{status}")


def makeApiSite(
    registry: SessionRegistry,
    keys: Iterable[bytes],
    counters: Counters,
    maxMessageSize: int = 65536,
    metrics: Optional[IResource] = None,
    reactor: Any = None,
    stats: Optional[Callable[[], Dict[str, Any]]] = None,
) -> ApiSite:
    """
    The API's site for C{registry}: cluster-wide when it is a cluster
    registry (its idempotency keys then kept in Redis).
    """
    if reactor is None:
        from twisted.internet import reactor
    delivery = deliveryFor(registry)
    if delivery.clusterWide:
        reg: Any = registry
        idempotency: Any = RedisKeys(reg.link, reg.prefix, reactor)
    else:
        idempotency = MemoryKeys(reactor)
    api = ApiResource(keys, delivery, counters, idempotency, openapiBytes, maxMessageSize, stats)
    site = ApiSite(ApiRoot(api, metrics, counters), reactor=reactor)
    site.displayTracebacks = False
    site.maxBodySize = maxMessageSize or UNBOUNDED_BODY
    site.api = api
    return site


__all__ = ["ApiSite", "makeApiSite"]
