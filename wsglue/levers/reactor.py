"""
The reactor wsglue runs on by default: Twisted's epoll reactor, dispatching
each I/O event without a per-event log context.

Twisted's epoll reactor hands every read or write event to its selectable
through L{twisted.python.log.callWithLogger}, which pushes a copy of the
legacy log context (C{{"system": logPrefix}}) for the duration of the call
so that a legacy C{log.msg} or C{log.err} made inside it is labelled with
the connection.  On a gateway whose connections each send small frames,
that is one dictionary copy, push and pop per message: a fifth to a third
of the echo throughput of one wsglue process (see the README's Performance
section).  wsglue and Autobahn log through L{twisted.logger}, whose events
carry their own namespace and never read that context.

L{GlueEPollReactor} keeps everything else of Twisted's epoll reactor.  What
callWithLogger did besides the context it does too: an exception that
escapes a selectable's handler is logged (with the selectable's log prefix
as its system) and the loop goes on.  What is lost is the label on legacy
log lines written from inside an I/O handler, such as the "Unhandled Error"
Twisted logs for a protocol method that raised: their system reads C{-}
instead of e.g. C{GlueServerProtocol,12,127.0.0.1}.

Under C{twistd wsglue} (and C{glue.tac}) it is installed when no reactor
has been chosen yet; C{twistd -r epoll wsglue} runs on Twisted's own.  It is
also a reactor plugin: C{twistd -r wsglue ...}, C{trial --reactor=wsglue}.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Any, Optional

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log


class GlueEPollReactor(EPollReactor):
    """
    L{EPollReactor}, dispatching I/O events without a legacy log context.
    """

    def doPoll(self, timeout: Optional[float]) -> None:
        """
        Poll for events and dispatch them: L{EPollReactor.doPoll} without
        L{log.callWithLogger} around each event.
        """
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # _doReadOrWrite already turns an exception of doRead or
                # doWrite into connectionLost; this is callWithLogger's last
                # resort, for one that escapes even that.
                _logEscaped(selectable)

    doIteration = doPoll


def _logEscaped(selectable: Any) -> None:
    try:
        system = selectable.logPrefix()
    except BaseException:
        system = "(buggy logPrefix method)"
    log.err(system=system)


def install() -> None:
    """
    Install L{GlueEPollReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    installReactor(GlueEPollReactor())


def installIfUnchosen() -> bool:
    """
    Install L{GlueEPollReactor} if no reactor is installed yet and epoll is
    available; return whether it was installed.  A reactor chosen already
    (C{twistd -r poll}, trial's, an application's) is left alone.
    """
    if "twisted.internet.reactor" in sys.modules or not hasattr(select, "epoll"):
        return False
    install()
    return True


def precondition() -> Optional[str]:
    """
    Why the lever cannot run here, or C{None}: it needs epoll and the parts
    of Twisted's epoll reactor its C{doPoll} uses.
    """
    if not hasattr(select, "epoll"):
        return "no epoll on this system"
    from wsglue.levers import missingAttributes

    return missingAttributes(EPollReactor, ("doPoll", "_doReadOrWrite"))


__all__ = ["GlueEPollReactor", "install", "installIfUnchosen", "precondition"]
