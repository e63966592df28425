"""
The ingress benchmark (issue 16): how fast messages come into wsglue from
backends, through the HTTP API and through a Redis Stream source, to
WebSocket clients.  Run it with C{python -m bench.ingress}; see
C{docs/ingress-performance.md}.
"""
