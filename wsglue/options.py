"""
The options of C{twistd wsglue} and of C{glue.tac}: L{GlueOptions}, and the
C{WSGLUE_*} environment variables that spell them (L{optionsFromEnvironment}).

Every configuration error is a L{usage.UsageError} raised while parsing, so
that a bad value is one clear line and a non-zero exit, never a traceback.
Parsing has no side effects beyond the checks (it imports the reactor to
check the endpoint string).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import endpoints
from twisted.python import usage

from wsglue.cookies import RESERVED_NAMES
from wsglue.handlers import PingPong, loadHandler
from wsglue.keys import KeyFileError, readKeys


def defaultStaticPath() -> str:
    """
    The C{static/} folder shipped in the package (or, in a source checkout,
    the one beside C{wsglue/}).
    """
    try:
        from importlib.resources import files

        path = str(files("wsglue") / "static")
        if os.path.isfile(os.path.join(path, "index.html")):
            return path
    except (ImportError, TypeError, ValueError):
        pass
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "static")


def _number(
    kind: Callable[[str], Any], what: str, least: float = 0, most: float = float("inf")
) -> Callable[[str, Any], Any]:
    def coerce(option: str, value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = least - 1
        if number != number or number < least or number > most or number == float("inf"):
            raise usage.UsageError(f"--{option} {what}, not {value!r}")
        return number

    return coerce


# The most processes --workers starts: more than a host has cores is only
# memory (each worker is a whole wsglue), and a typo such as 1000 would
# start hundreds of them.
MAX_WORKERS = 64

seconds = _number(float, "must be a number of seconds, 0 or more")
count = _number(int, "must be a whole number, 0 or more")
positive = _number(int, "must be a whole number, 1 or more", least=1)
rate = _number(float, "must be a number, 0 or more")
workerCount = _number(int, f"must be a whole number from 1 to {MAX_WORKERS}", least=1, most=MAX_WORKERS)

# Options whose value is checked and converted in postOptions, so that a bad
# value is reported with the option's name.
NUMBERS: Dict[str, Callable[[str, Any], Any]] = {
    "broadcast-interval": seconds,
    "max-message-size": count,
    "ping-interval": seconds,
    "ping-timeout": seconds,
    "handshake-timeout": seconds,
    "max-connections": count,
    "max-connections-per-ip": count,
    "max-connections-per-session": count,
    "max-messages-per-second": rate,
    "max-send-buffer": count,
    "workers": workerCount,
    "history-size": count,
    "history-bytes": count,
    "history-ttl": seconds,
    "presence-grace": seconds,
}


class GlueOptions(usage.Options):
    """
    The options of C{twistd wsglue}, checked and converted; parsing them
    changes nothing else (see L{wsglue.tap.Options} for what does).
    """

    synopsis = "[options]"
    longdesc = "Serve the wsglue page and its WebSocket endpoint on one port."

    optParameters: List[List[Any]] = [
        ["port", "p", "tcp:9998", "Twisted server endpoint string to listen on."],
        ["static", None, None, "Folder served over HTTP [default: the page shipped with wsglue]."],
        ["cookie-name", None, "CookieName", "Name of the session cookie."],
        ["broadcast-interval", None, 3.0, "Seconds between demo broadcasts; 0 turns them off."],
        ["broadcast-message", None, "notify", "What the demo broadcast sends."],
        ["handler", None, None, "Application message handler, MODULE:NAME [default: ping/pong]."],
        ["max-message-size", None, 65536, "Larger incoming messages close the connection with 1009."],
        ["ping-interval", None, 30.0, "Seconds between server pings; 0 turns them off."],
        ["ping-timeout", None, 10.0, "Seconds a peer has to answer a ping."],
        ["handshake-timeout", None, 10.0, "Seconds a peer has to finish the opening handshake; 0 off."],
        ["secret-file", None, None, "File of keys (one a line, first signs) for signed session ids."],
        ["max-connections", None, 0, "WebSockets in all; above it the handshake gets 503; 0 off."],
        ["max-connections-per-ip", None, 0, "WebSockets per client address; above it 429; 0 off."],
        ["max-connections-per-session", None, 32, "Tabs per session; a further one is closed with 1008; 0 off."],
        [
            "max-messages-per-second",
            None,
            0,
            "Messages per connection (token bucket); a flood is closed with 1008; 0 off.",
        ],
        ["max-send-buffer", None, 1048576, "Unsent bytes per connection; a peer that stops reading is cut off; 0 off."],
        [
            "redis",
            None,
            None,
            "redis://[:password@]host:port/db: the registry spans every process and host on that Redis.",
        ],
        ["workers", None, 1, "Processes sharing the listening port; more than 1 requires --redis."],
        ["history-size", None, 100, "Messages kept per stream for clients that resume; 0 turns continuity off."],
        ["history-bytes", None, 262144, "Bytes kept per stream; 0 for no byte bound."],
        ["history-ttl", None, 120.0, "Seconds a message stays replayable, and a session's stream outlives it."],
        ["presence-grace", None, 30.0, "Seconds without a connection before a session has ended."],
        ["api", None, None, "Endpoint of the HTTP API and /metrics, on a port of its own [default: off]."],
        [
            "api-key-file",
            None,
            None,
            "File of the API's bearer keys, one a line, any may be used (required with --api).",
        ],
    ]

    optFlags: List[List[Any]] = [
        ["verbose", "v", "Log every message."],
        ["trust-proxy", None, "Take X-Forwarded-Proto / X-Forwarded-For from a reverse proxy."],
        ["no-levers", None, "Run the plain path: Autobahn's and Twisted's public API only (slower)."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["allowed-origin"] = []
        self["sources"] = []

    def opt_source(self, url: str) -> None:
        """
        Read messages from a source (repeatable):
        redis-stream://[:password@]host:port/db?stream=NAME&group=GROUP[&start=0].
        """
        from wsglue.sources.source import BadSourceURL, parseSource

        try:
            self["sources"].append(parseSource(url))
        except BadSourceURL as e:
            raise usage.UsageError(f"--source {url!r} is not a valid source: {e}")

    def opt_allowed_origin(self, pattern: str) -> None:
        """
        Browser Origin allowed to open a WebSocket, as an Autobahn wildcard
        pattern (repeatable; * allows any) [default: same origin only].
        """
        if not pattern.strip():
            raise usage.UsageError("--allowed-origin needs a pattern")
        self["allowed-origin"].append(pattern.strip())

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        # The command line as given: --workers N starts each worker with it.
        self["argv"] = list(sys.argv[1:] if options is None else options)
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd a UsageError prints all of twistd's help before
            # the one line that matters; say only that line.
            sys.stderr.write(f"wsglue: error: {e}\n")
            raise SystemExit(2)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        for name, coerce in NUMBERS.items():
            self[name] = coerce(name, self[name])

        try:
            endpoint = endpoints.serverFromString(reactor, self["port"])
        except Exception as e:
            raise usage.UsageError(f"--port {self['port']!r} is not a valid endpoint: {e}")
        problem = endpointProblem(endpoint)
        if problem is not None:
            raise usage.UsageError(f"--port {self['port']!r} is not a valid endpoint: {problem}")

        if self["static"] is None:
            self["static"] = defaultStaticPath()
        if not os.path.isdir(self["static"]):
            raise usage.UsageError(f"--static {self['static']!r} is not a folder")
        if not os.path.isfile(os.path.join(self["static"], "index.html")):
            raise usage.UsageError(f"--static {self['static']!r} has no index.html")

        if not self["cookie-name"] or not _isToken(self["cookie-name"]):
            raise usage.UsageError(f"--cookie-name {self['cookie-name']!r} is not a valid cookie name")
        if self["cookie-name"].lower() in RESERVED_NAMES:
            # Browsers would store it, but a Cookie header would read as
            # an attribute of the cookie before it, never as ours.
            raise usage.UsageError(
                f"--cookie-name {self['cookie-name']!r} is the name of a cookie attribute"
                " (Path, Domain, Expires, Max-Age, Secure, HttpOnly, SameSite, Version, Comment)"
            )

        if self["ping-interval"] and not self["ping-timeout"]:
            # Autobahn would send pings and never give up on a silent peer.
            raise usage.UsageError(
                "--ping-timeout must be more than 0 while --ping-interval is on"
                " (use --ping-interval 0 to turn pings off)"
            )

        self["secret-keys"] = []
        if self["secret-file"] is not None:
            try:
                self["secret-keys"] = readKeys(self["secret-file"])
            except KeyFileError as e:
                raise usage.UsageError(str(e))

        self["redis-url"] = None
        if self["redis"] is not None:
            from wsglue.cluster.redisurl import BadRedisURL, parseRedisURL

            try:
                self["redis-url"] = parseRedisURL(self["redis"])
            except BadRedisURL as e:
                raise usage.UsageError(f"--redis {self['redis']!r} is not a valid Redis URL: {e}")
        if self["workers"] > 1:
            from wsglue.process.workers import adoptable

            if self["redis"] is None:
                raise usage.UsageError(f"--workers {self['workers']} > 1 requires --redis")
            if not adoptable(self["port"]):
                raise usage.UsageError(
                    f"--workers {self['workers']} > 1 needs a tcp: --port, not {self['port']!r}"
                    " (the workers share one TCP socket; terminate TLS in front of them)"
                )

        self.checkApi()

        if self["handler"] is None:
            self["handler-factory"] = PingPong
        else:
            try:
                self["handler-factory"] = loadHandler(self["handler"])
            except ValueError as e:
                raise usage.UsageError(str(e))

    def checkApi(self) -> None:
        """
        Check C{--api} and C{--api-key-file} as C{--port} is checked, and
        read the keys (C{api-keys}) so that a missing or empty key file is
        one line at start-up.
        """
        from twisted.internet import reactor

        self["api-keys"] = []
        if self["api"] is None:
            if self["api-key-file"] is not None:
                raise usage.UsageError("--api-key-file is only used with --api")
            return
        try:
            endpoint = endpoints.serverFromString(reactor, self["api"])
        except Exception as e:
            raise usage.UsageError(f"--api {self['api']!r} is not a valid endpoint: {e}")
        problem = endpointProblem(endpoint)
        if problem is not None:
            raise usage.UsageError(f"--api {self['api']!r} is not a valid endpoint: {problem}")
        if self["workers"] > 1:
            from wsglue.process.workers import adoptable

            if not adoptable(self["api"]):
                raise usage.UsageError(
                    f"--workers {self['workers']} > 1 needs a tcp: --api, not {self['api']!r}"
                    " (the workers share one TCP socket)"
                )
        if self["api-key-file"] is None:
            raise usage.UsageError("--api requires --api-key-file (the bearer keys of the API)")
        try:
            self["api-keys"] = readKeys(self["api-key-file"], "--api-key-file")
        except KeyFileError as e:
            raise usage.UsageError(str(e))


# The longest path of a unix socket (sun_path holds 108 bytes on Linux, 104
# on the BSDs and macOS, with the terminating NUL).
_UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def endpointProblem(endpoint: Any) -> Optional[str]:
    """
    What is wrong with a server endpoint that Twisted parsed without
    complaint but could never listen on, or C{None}: a TCP or TLS port
    number out of 0-65535, a negative backlog, a unix socket path too long
    for the system.  Checked at option parsing, so that the mistake is one
    line and exit status 2 rather than a failure at run time.

    Twisted's endpoint classes keep what was parsed in private attributes;
    an endpoint without them (another plugin's, or another Twisted) is not
    checked here and fails, if it must, when it listens.
    """
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"the port number must be from 0 to 65535, not {port}"
    backlog = getattr(endpoint, "_backlog", None)
    if isinstance(backlog, int) and backlog < 0:
        return f"the backlog must be 0 or more, not {backlog}"
    address = getattr(endpoint, "_address", None)
    if isinstance(address, str) and not address.startswith("\0"):
        size = len(os.fsencode(address))
        if size > _UNIX_PATH_MAX:
            return f"a unix socket path is at most {_UNIX_PATH_MAX} bytes, not {size}"
    return None


def _isToken(name: str) -> bool:
    # RFC 6265 cookie-name: an RFC 2616 token.
    separators = set('()<>@,;:\\"/[]?={} \t')
    return all(32 < ord(c) < 127 and c not in separators for c in name)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def optionsFromEnvironment(optionsClass: Any, environ: Dict[str, str]) -> List[str]:
    """
    The command line that the C{WSGLUE_*} variables of C{environ} spell:
    C{WSGLUE_} + the long option in upper case with C{-} as C{_}.  Flags take
    C{1/true/yes/on} or C{0/false/no/off}; repeatable options take a
    comma-separated list.

    @raise usage.UsageError: for a flag whose value is neither, and for a
        C{WSGLUE_*} variable that names no option (a typo would otherwise
        go unnoticed).
    """
    argv: List[str] = []

    def variable(name: str) -> str:
        return "WSGLUE_" + name.upper().replace("-", "_")

    repeatable = ("allowed-origin", "source")
    known = {variable(row[0]) for row in optionsClass.optParameters + optionsClass.optFlags}
    known.update(variable(name) for name in repeatable)
    unknown = sorted(name for name in environ if name.startswith("WSGLUE_") and name not in known)
    if unknown:
        raise usage.UsageError(
            f"{unknown[0]} names no option (the variables are WSGLUE_ + a long option"
            " in upper case with - as _, such as WSGLUE_PORT)"
        )

    for row in optionsClass.optParameters:
        value = environ.get(variable(row[0]))
        if value is not None:
            argv.append(f"--{row[0]}={value}")
    for row in optionsClass.optFlags:
        value = environ.get(variable(row[0]))
        if value is None:
            continue
        if value.strip().lower() in _TRUE:
            argv.append(f"--{row[0]}")
        elif value.strip().lower() not in _FALSE:
            raise usage.UsageError(f"{variable(row[0])}={value!r}: use 1 or 0")
    for name in repeatable:
        value = environ.get(variable(name))
        if value:
            argv.extend(f"--{name}={v.strip()}" for v in value.split(",") if v.strip())
    return argv


def parseEnvironment(options: usage.Options, environ: Dict[str, str]) -> None:
    """
    Parse into C{options} what the C{WSGLUE_*} variables of C{environ} spell
    (L{optionsFromEnvironment}).

    @raise usage.UsageError: as L{usage.Options.parseOptions} does, but
        naming the variable that the user set rather than the option it
        stands for: C{WSGLUE_BROADCAST_INTERVAL must be a number of seconds,
        0 or more, not 'abc'}.
    """
    optionsClass: Any = type(options)
    argv = optionsFromEnvironment(optionsClass, environ)
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        message = str(e)
        for row in optionsClass.optParameters + optionsClass.optFlags:
            name = "WSGLUE_" + row[0].upper().replace("-", "_")
            if name in environ:
                message = re.sub(rf"(?<![\w-])--{re.escape(row[0])}(?![\w-])", name, message)
        if "WSGLUE_ALLOWED_ORIGIN" in environ:
            message = re.sub(r"(?<![\w-])--allowed-origin(?![\w-])", "WSGLUE_ALLOWED_ORIGIN", message)
        raise usage.UsageError(message) from e
