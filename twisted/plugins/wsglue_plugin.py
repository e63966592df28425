"""
The twistd plugin for wsglue: ``twistd wsglue``.

The module is named as a string so that ``twistd --help`` imports neither
Autobahn nor the application.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

wsglue = ServiceMaker(
    "wsglue",
    "wsglue.tap",
    "A session-aware WebSocket gateway for real-time data streaming apps.",
    "wsglue",
)

# twistd -r wsglue, trial --reactor=wsglue: the reactor twistd wsglue runs on
# when none is chosen (see wsglue.levers.reactor).
wsglueReactor = Reactor(
    "wsglue",
    "wsglue.levers.reactor",
    "epoll(4) based reactor, without a log context per I/O event.",
)
