"""
The OpenAPI 3.1 document of the API (C{openapi.json} beside this module),
served at C{/api/openapi.json}.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any, Dict


@lru_cache(maxsize=1)
def openapiBytes() -> bytes:
    """
    The document as served.
    """
    return (files("wsglue.api") / "openapi.json").read_bytes()


def openapiDocument() -> Dict[str, Any]:
    """
    The document, parsed.
    """
    document: Dict[str, Any] = json.loads(openapiBytes())
    return document
