"""
The HTTP API for backends (C{--api}): sending to sessions, broadcasting,
listing and closing sessions, its OpenAPI document, and the Prometheus
metrics, on a port of their own.

L{wsglue.api.site.makeApiSite} builds the site; L{wsglue.api.service.
ApiService} listens with it; L{wsglue.tap.makeService} wires them.
"""
