"""
What the API does to sessions, in this process or across the cluster:
L{LocalDelivery} on a L{SessionRegistry}, L{ClusterDelivery} on a
L{wsglue.cluster.registry.ClusterRegistry} (C{--redis}).  Every call
answers with a Deferred, so the API's routes are the same either way.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred

from wsglue.registry import Message, SessionRegistry


def streamPosition(registry: SessionRegistry, sid: Optional[str]) -> Tuple[Optional[int], Optional[str]]:
    """
    The offset and epoch that the message just sent to session C{sid}
    (C{None}: the broadcast stream) got in its stream, or C{(None, None)}
    when it has no stream.  Streams do not exist yet: always C{(None, None)}.
    This is the one place that will read them.
    """
    return None, None


class LocalDelivery:
    """
    The API's operations on the sessions of this process.
    """

    clusterWide = False

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def send(self, sid: str, message: Message) -> Deferred:
        """
        Fire with the number of connections of C{sid} reached.
        """
        return defer.succeed(self.registry.send(sid, message))

    def broadcast(self, message: Message) -> Deferred:
        """
        Fire with the number of connections reached.
        """
        return defer.succeed(self.registry.broadcast(message))

    def close(self, sid: str, code: int, reason: str) -> Deferred:
        """
        Fire with the number of connections asked to close.
        """
        return defer.succeed(self.registry.close(sid, code, reason))

    def sessions(self) -> Deferred:
        """
        Fire with the ids of the open sessions, sorted.
        """
        return defer.succeed(sorted(self.registry.sessions()))

    def connections(self, sid: str) -> Optional[int]:
        """
        How many connections of C{sid} are open (C{None}: unknown here).
        """
        return len(self.registry.connections(sid))

    def online(self, sid: str) -> Deferred:
        """
        Fire with whether C{sid} has a connection.
        """
        return defer.succeed(sid in self.registry)


class ClusterDelivery(LocalDelivery):
    """
    The API's operations on every session of the cluster: sends, broadcasts
    and closes reach every process (see L{ClusterRegistry.sendCounted} for
    what their numbers count), listings come from Redis.
    """

    clusterWide = True
    registry: Any

    def send(self, sid: str, message: Message) -> Deferred:
        d: Deferred = self.registry.sendCounted(sid, message)
        return d

    def broadcast(self, message: Message) -> Deferred:
        d: Deferred = self.registry.broadcastCounted(message)
        return d

    def close(self, sid: str, code: int, reason: str) -> Deferred:
        d: Deferred = self.registry.closeCounted(sid, code, reason)
        return d

    def sessions(self) -> Deferred:
        d: Deferred = self.registry.sessionsEverywhere()
        return d

    def connections(self, sid: str) -> Optional[int]:
        """
        The connections this process holds of C{sid}; C{None} when it holds
        none (the others' counts would cost a round trip per session).
        """
        return len(self.registry.connections(sid)) or None

    def online(self, sid: str) -> Deferred:
        d: Deferred = self.registry.hasSession(sid)
        return d


def deliveryFor(registry: SessionRegistry) -> LocalDelivery:
    """
    The delivery that fits C{registry}: cluster-wide for a cluster registry.
    """
    if hasattr(registry, "sendCounted"):
        return ClusterDelivery(registry)
    return LocalDelivery(registry)
