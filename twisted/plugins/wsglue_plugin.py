"""
The twistd plugin for wsglue: ``twistd wsglue``.

The module is named as a string so that ``twistd --help`` imports neither
Autobahn nor the application.
"""

from twisted.application.service import ServiceMaker

wsglue = ServiceMaker(
    "wsglue",
    "wsglue.tap",
    "A session-aware WebSocket gateway for real-time data streaming apps.",
    "wsglue",
)
