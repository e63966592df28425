"""
What the API does to sessions, in this process or across the cluster:
L{LocalDelivery} on a L{SessionRegistry}, L{ClusterDelivery} on a
L{wsglue.cluster.registry.ClusterRegistry} (C{--redis}).  Every call
answers with a Deferred, so the API's routes are the same either way.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

from twisted.internet import defer
from twisted.internet.defer import Deferred

from wsglue.registry import Message, SessionRegistry


class Delivered(NamedTuple):
    """
    What a send or broadcast reached, and the offset and epoch the message
    got in its stream (C{None}, C{None} when it is in none: continuity off,
    or the message held while Redis is unreachable).
    """

    delivered: int
    offset: Optional[int] = None
    epoch: Optional[str] = None


def streamPosition(registry: SessionRegistry, sid: Optional[str]) -> Tuple[Optional[int], Optional[str]]:
    """
    The offset and epoch of the last message of session C{sid}'s stream
    (C{None}: the broadcast stream) in this process, or C{(None, None)}
    when there is no such stream.  Read right after a send, in the same
    reactor turn, it is that message's.
    """
    stream = registry.broadcastStream if sid is None else registry.sessionStream(sid)
    if stream is None:
        return None, None
    epoch, offset = stream.position()
    return offset, epoch


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
        n = self.registry.send(sid, message)
        return defer.succeed(Delivered(n, *streamPosition(self.registry, sid)))

    def broadcast(self, message: Message) -> Deferred:
        """
        Fire with the number of connections reached.
        """
        n = self.registry.broadcast(message)
        return defer.succeed(Delivered(n, *streamPosition(self.registry, None)))

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
        return d.addCallback(lambda counted: Delivered(*counted))

    def broadcast(self, message: Message) -> Deferred:
        d: Deferred = self.registry.broadcastCounted(message)
        return d.addCallback(lambda counted: Delivered(*counted))

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
