"""
Tests for the OpenAPI document: it describes every operation the API
has, and schemathesis, run against a real daemon from it, finds no server
error, no answer that breaks the document, and no call that works without
a key.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.api_client import KEYS, keyFile
from tests.common import CollectOutput, freePort, spawnDaemon
from wsglue.api.openapi import openapiDocument

# negative_data_rejection expects 4xx statuses for requests the document
# forbids; a batch of more than 1,000 messages is one of them, and its
# answer is 413, as for any body that is too large.
SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5XX"]
"""


class DocumentTests(SynchronousTestCase):
    """
    The document itself.
    """

    def test_everyOperation(self) -> None:
        """
        Every route of the API, with each of its methods, is in the
        document, and nothing else is.
        """
        from wsglue.api.delivery import LocalDelivery
        from wsglue.api.resource import ApiResource
        from wsglue.counters import Counters
        from wsglue.registry import SessionRegistry

        api = ApiResource([b"k"], LocalDelivery(SessionRegistry()), Counters(), None, bytes)
        routes = {(r.template, m.decode().lower()) for r in api.routes for m in r.methods}
        routes.add(("/metrics", "get"))
        routes.add(("/admin", "get"))
        documented = {(path, method) for path, ops in openapiDocument()["paths"].items() for method in ops}
        self.assertEqual(documented, routes)

    def test_bearer(self) -> None:
        """
        Every operation but the document, the metrics and the admin page
        (which asks for a key itself) needs the bearer key.
        """
        document = openapiDocument()
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertEqual(
            document["components"]["securitySchemes"]["bearer"],
            {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the keys in --api-key-file.",
            },
        )
        self.assertEqual(document["security"], [{"bearer": []}])
        open_ = {path for path, ops in document["paths"].items() for op in ops.values() if op.get("security") == []}
        self.assertEqual(open_, {"/api/openapi.json", "/metrics", "/admin"})


class SchemathesisTests(TestCase):
    """
    schemathesis against a real daemon.
    """

    timeout = 120

    @inlineCallbacks
    def test_conforms(self) -> Any:
        """
        Every operation, with a bounded number of generated requests each:
        no 5xx, every answer as the document says, the key honoured.
        """
        try:
            import schemathesis  # noqa: F401
        except ImportError:
            raise SkipTest("schemathesis is not installed (pip install '.[test]')")
        apiPort = freePort()
        daemon = spawnDaemon(
            self,
            [
                "--port",
                f"tcp:{freePort()}:interface=127.0.0.1",
                "--api",
                f"tcp:{apiPort}:interface=127.0.0.1",
                "--api-key-file",
                keyFile(self),
                "--broadcast-interval",
                "0",
            ],
        )
        yield daemon.waitForOutput("started api server at")
        folder = tempfile.mkdtemp(prefix="wsglue-st-")
        config = os.path.join(folder, "schemathesis.toml")
        with open(config, "w") as f:
            f.write(SCHEMATHESIS_CONFIG)
        argv = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            config,
            "run",
            f"http://127.0.0.1:{apiPort}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {KEYS[1]}",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ]
        proto = CollectOutput()
        reactor.spawnProcess(proto, sys.executable, argv, env=dict(os.environ), path=folder)
        status = yield proto.ended
        output = proto.output.decode("utf-8", "replace")
        self.assertEqual(status, 0, output)
        self.assertIn(" passed", output)
        self.assertNotIn("Traceback", daemon.output)
