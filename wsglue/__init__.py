"""
wsglue: a session-aware WebSocket gateway on Twisted and Autobahn.

The public surface for server code is the registry handed to handlers
(L{wsglue.registry.SessionRegistry}) and the handler interface described in
L{wsglue.handlers}.
"""

__version__ = "0.1.0"
