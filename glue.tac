"""
Run wsglue with twistd -ny glue.tac.

Every option of ``twistd wsglue`` may be set by an environment variable named
WSGLUE_ + the long option in upper case with - as _ (WSGLUE_PORT=tcp:8080,
WSGLUE_BROADCAST_INTERVAL=1, WSGLUE_VERBOSE=1).
"""

import os
import sys

from twisted.application.service import Application
from twisted.python.usage import UsageError

from wsglue.tap import Options, makeService, parseEnvironment

try:
    options = Options()
    parseEnvironment(options, os.environ)
except UsageError as e:
    sys.stderr.write(f"wsglue: error: {e}\n")
    raise SystemExit(2)

application = Application("wsglue")
# Bound now, before twistd daemonizes: a port in use is one line on the
# terminal.
makeService(options, bindNow=True).setServiceParent(application)
