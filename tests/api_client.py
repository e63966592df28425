"""
Helpers for the API's tests: a wsglue service with C{--api} on loopback
(L{serveApi}), and a treq client that keeps no connection past a request.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from tests.common import RunningService

KEYS = ("first-key-0123456789", "second-key-abcdefghij")


def keyFile(testCase: Any, keys: Sequence[str] = KEYS, text: Optional[str] = None) -> str:
    """
    A key file (mode 0600) holding C{keys}, one a line with a blank line
    between, or C{text}.
    """
    folder = tempfile.mkdtemp(prefix="wsglue-api-")
    path = os.path.join(folder, "keys")
    with open(path, "w") as f:
        f.write(text if text is not None else "\n\n".join(keys) + "\n")
    os.chmod(path, 0o600)
    return path


class ApiService:
    """
    A service with the API on, and its client.
    """

    def __init__(self, testCase: Any, *argv: str) -> None:
        self.running = RunningService("--api", "tcp:0:interface=127.0.0.1", "--api-key-file", keyFile(testCase), *argv)
        testCase.addCleanup(self.running.stop)
        self.port = self.running.port
        self.registry = self.running.registry
        self.counters = self.running.service.counters
        self.api = self.running.service.getServiceNamed("api")
        self.apiPort = self.api.port.getHost().port
        self.base = f"http://127.0.0.1:{self.apiPort}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        contentType: Optional[str] = "text/plain",
        key: Optional[str] = KEYS[0],
        headers: Optional[Dict[str, str]] = None,
    ) -> Any:
        """
        Fires with C{(response, body bytes)}.
        """
        h: Dict[str, Any] = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        if body is not None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode("utf-8")
                contentType = "application/json"
            elif isinstance(body, str):
                body = body.encode("utf-8")
            if contentType is not None:
                h["Content-Type"] = contentType
        return _collect(self.http.request(method, self.base + path, data=body, headers=h))

    @inlineCallbacks
    def json(self, method: str, path: str, *args: Any, **kw: Any) -> Any:
        """
        Fires with C{(status, parsed JSON body, response)}.
        """
        response, body = yield self.request(method, path, *args, **kw)
        return response.code, json.loads(body), response


@inlineCallbacks
def _collect(d: Any) -> Any:
    response = yield d
    body = yield treq.content(response)
    return response, body


def serveApi(testCase: Any, *argv: str) -> ApiService:
    return ApiService(testCase, *argv)
