"""
Sources: services that read messages from outside (a Redis Stream today)
and deliver them to sessions as C{registry.send} / C{registry.broadcast}
would.  L{wsglue.sources.source} holds what every source shares.
"""
