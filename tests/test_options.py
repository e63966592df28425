"""
Tests for L{wsglue.tap.Options} and L{wsglue.tap.optionsFromEnvironment}:
every option of SPEC section 3 and the error each bad value gives.
"""

from __future__ import annotations

import os

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.handlers_for_tests import Recorder, makeRecorder
from wsglue.handlers import PingPong
from wsglue.tap import (
    HandlerFailed,
    Options,
    buildHandler,
    defaultStaticPath,
    optionsFromEnvironment,
    parseEnvironment,
)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class DefaultsTests(SynchronousTestCase):
    """
    The defaults of SPEC section 3.
    """

    def setUp(self) -> None:
        self.options = parse()

    def test_port(self) -> None:
        """
        The default port is C{tcp:9998}.
        """
        self.assertEqual(self.options["port"], "tcp:9998")

    def test_static(self) -> None:
        """
        The default static folder is the page shipped with wsglue.
        """
        self.assertEqual(self.options["static"], defaultStaticPath())
        self.assertTrue(os.path.isfile(os.path.join(self.options["static"], "index.html")))
        self.assertTrue(os.path.isfile(os.path.join(self.options["static"], "scripts", "ws-script.js")))

    def test_cookieAndBroadcast(self) -> None:
        """
        The cookie is C{CookieName}; the demo broadcast sends C{notify} every
        3 seconds.
        """
        self.assertEqual(self.options["cookie-name"], "CookieName")
        self.assertEqual(self.options["broadcast-interval"], 3.0)
        self.assertEqual(self.options["broadcast-message"], "notify")

    def test_handler(self) -> None:
        """
        The default handler is the ping/pong demo.
        """
        self.assertIsNone(self.options["handler"])
        self.assertIs(self.options["handler-factory"], PingPong)

    def test_limits(self) -> None:
        """
        Messages up to 64 KiB; ping every 30 seconds with a 10 second timeout.
        """
        self.assertEqual(self.options["max-message-size"], 65536)
        self.assertEqual(self.options["ping-interval"], 30.0)
        self.assertEqual(self.options["ping-timeout"], 10.0)

    def test_originAndFlags(self) -> None:
        """
        Same origin only; not verbose.
        """
        self.assertEqual(self.options["allowed-origin"], [])
        self.assertFalse(self.options["verbose"])


class ValuesTests(SynchronousTestCase):
    """
    Good values are taken and converted.
    """

    def test_numbersConverted(self) -> None:
        """
        Numbers given as strings are converted: seconds to float, sizes to int.
        """
        options = parse(
            "--broadcast-interval",
            "0.5",
            "--max-message-size",
            "10",
            "--ping-interval",
            "0",
            "--ping-timeout",
            "2.5",
        )
        self.assertEqual(options["broadcast-interval"], 0.5)
        self.assertEqual(options["max-message-size"], 10)
        self.assertIsInstance(options["max-message-size"], int)
        self.assertEqual(options["ping-interval"], 0.0)
        self.assertEqual(options["ping-timeout"], 2.5)

    def test_shortOptions(self) -> None:
        """
        C{-p} is C{--port} and C{-v} is C{--verbose}.
        """
        options = parse("-p", "tcp:1234:interface=127.0.0.1", "-v")
        self.assertEqual(options["port"], "tcp:1234:interface=127.0.0.1")
        self.assertTrue(options["verbose"])

    def test_unixEndpoint(self) -> None:
        """
        A C{unix:} endpoint string is accepted.
        """
        self.assertEqual(parse("--port", "unix:/tmp/wsglue.sock")["port"], "unix:/tmp/wsglue.sock")

    def test_allowedOriginRepeatable(self) -> None:
        """
        C{--allowed-origin} may be given several times.
        """
        options = parse("--allowed-origin", "https://a.example", "--allowed-origin", "http://*:8080")
        self.assertEqual(options["allowed-origin"], ["https://a.example", "http://*:8080"])

    def test_allowedOriginNotShared(self) -> None:
        """
        Each L{Options} has its own list of origins.
        """
        parse("--allowed-origin", "https://a.example")
        self.assertEqual(parse()["allowed-origin"], [])

    def test_handlerClass(self) -> None:
        """
        C{--handler MODULE:NAME} loads a class.
        """
        options = parse("--handler", "tests.handlers_for_tests:Recorder")
        self.assertIs(options["handler-factory"], Recorder)

    def test_handlerFunction(self) -> None:
        """
        C{--handler MODULE:NAME} loads a factory function.
        """
        options = parse("--handler", "tests.handlers_for_tests:makeRecorder")
        self.assertIs(options["handler-factory"], makeRecorder)

    def test_handlerDotted(self) -> None:
        """
        C{NAME} may be dotted, an attribute of an attribute.
        """
        options = parse("--handler", "tests.handlers_for_tests:Namespace.Inner")
        self.assertIs(options["handler-factory"], Recorder)

    def test_static(self) -> None:
        """
        C{--static} takes a folder holding an C{index.html}.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "index.html"), "w") as f:
            f.write("<p>hi</p>")
        self.assertEqual(parse("--static", folder)["static"], folder)


class ErrorTests(SynchronousTestCase):
    """
    Every bad value is a L{UsageError} whose message names the option and
    the value.
    """

    def assertError(self, argv: list, *fragments: str) -> str:
        exc = self.assertRaises(UsageError, Options().parseOptions, argv)
        message = str(exc)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_pingTimeoutZeroWhilePinging(self) -> None:
        """
        C{--ping-timeout 0} with pings on is refused: Autobahn would ping
        and never drop a silent peer.
        """
        self.assertError(["--ping-timeout", "0"], "--ping-timeout", "--ping-interval 0")

    def test_pingsOffTimeoutZero(self) -> None:
        """
        With pings off, a zero C{--ping-timeout} is fine.
        """
        o = Options()
        o.parseOptions(["--ping-interval", "0", "--ping-timeout", "0"])
        self.assertEqual((o["ping-interval"], o["ping-timeout"]), (0, 0))

    def test_handlerFactoryRaises(self) -> None:
        """
        A handler factory that raises when the service is built ends
        start-up with one line naming the handler and the error, and its
        traceback is logged.
        """
        o = Options()
        o.parseOptions(["--handler", "tests.handlers_for_tests:failingFactory"])
        exc = self.assertRaises(HandlerFailed, buildHandler, o, None)
        self.assertIsInstance(exc, SystemExit)
        self.assertEqual(
            str(exc),
            "wsglue: error: --handler tests.handlers_for_tests:failingFactory: building"
            " the handler failed: HandlerError: the backend is unreachable",
        )
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_unknownEndpointType(self) -> None:
        """
        A port string that is not an endpoint description is refused.
        """
        self.assertError(["--port", "nonsense"], "--port", "'nonsense'", "not a valid endpoint")

    def test_badPortNumber(self) -> None:
        """
        A non-numeric TCP port is refused.
        """
        self.assertError(["--port", "tcp:abc"], "--port", "'tcp:abc'", "not a valid endpoint")

    def test_portNumberOutOfRange(self) -> None:
        """
        A TCP or TLS port number that Twisted parses but no socket can bind
        (above 65535, negative) is refused while parsing, naming the port;
        0 and 65535 are fine.
        """
        for port in ("tcp:99999", "tcp:-1", "tcp6:65536", "tcp:65536:interface=127.0.0.1"):
            message = self.assertError(["--port", port], "--port", repr(port))
            self.assertIn("the port number must be from 0 to 65535", message)
        self.assertEqual(
            self.assertError(["--port", "tcp:99999"]),
            "--port 'tcp:99999' is not a valid endpoint: the port number must be from 0 to 65535, not 99999",
        )
        for port in ("tcp:0", "tcp:65535"):
            self.assertEqual(parse("--port", port)["port"], port)

    def test_endpointUnusable(self) -> None:
        """
        Other endpoints that parse but could never listen are refused too:
        a negative backlog, a unix socket path longer than the system takes.
        """
        self.assertError(["--port", "tcp:8080:backlog=-1"], "--port", "backlog")
        self.assertError(["--port", "unix:/tmp/" + "x" * 200], "--port", "unix socket path")

    def test_workersRange(self) -> None:
        """
        C{--workers} must be from 1 to 64: C{--workers 1000} once started
        hundreds of processes.  Refused while parsing, with one line.
        """
        redis = ["--redis", "redis://127.0.0.1:6379/0"]
        self.assertEqual(
            self.assertError(["--workers", "1000", *redis]),
            "--workers must be a whole number from 1 to 64, not '1000'",
        )
        for bad in ("0", "65", "-2", "2.5", "many"):
            self.assertError(["--workers", bad, *redis], "--workers", repr(bad), "1 to 64")
        self.assertEqual(parse("--workers", "64", *redis)["workers"], 64)
        self.assertEqual(parse("--workers", "1")["workers"], 1)

    def test_negativeNumbers(self) -> None:
        """
        Negative numbers are refused, naming the option and the value.
        """
        for option in ("broadcast-interval", "max-message-size", "ping-interval", "ping-timeout"):
            self.assertError([f"--{option}", "-1"], f"--{option}", "'-1'", "0 or more")

    def test_nonNumeric(self) -> None:
        """
        Values that are not numbers are refused.
        """
        for option in ("broadcast-interval", "max-message-size", "ping-interval", "ping-timeout"):
            self.assertError([f"--{option}", "soon"], f"--{option}", "'soon'")

    def test_notFinite(self) -> None:
        """
        C{nan} and C{inf} are not numbers of seconds.
        """
        self.assertError(["--broadcast-interval", "nan"], "--broadcast-interval", "'nan'")
        self.assertError(["--ping-timeout", "inf"], "--ping-timeout", "'inf'")

    def test_fractionalSize(self) -> None:
        """
        A size must be a whole number.
        """
        self.assertError(["--max-message-size", "1.5"], "--max-message-size", "whole number")

    def test_missingStaticFolder(self) -> None:
        """
        A C{--static} folder that does not exist is refused.
        """
        missing = os.path.abspath(self.mktemp())
        self.assertError(["--static", missing], "--static", missing, "not a folder")

    def test_staticFolderIsAFile(self) -> None:
        """
        A C{--static} that names a file is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        self.assertError(["--static", path], "--static", "not a folder")

    def test_staticFolderWithoutIndex(self) -> None:
        """
        A C{--static} folder without C{index.html} is refused.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        self.assertError(["--static", folder], "--static", "has no index.html")

    def test_badCookieName(self) -> None:
        """
        A cookie name that is not an RFC 6265 token is refused.
        """
        for name in ("a b", "a;b", "a=b", "", "caf\xe9", 'a"b'):
            self.assertError(["--cookie-name", name], "--cookie-name", "not a valid cookie name")

    def test_attributeCookieName(self) -> None:
        """
        A cookie attribute's name is refused as the cookie's name, in any
        case: the session cookie could never be read back.
        """
        for name in ("Path", "DOMAIN", "expires", "Max-Age", "Secure", "HttpOnly", "SameSite"):
            self.assertError(["--cookie-name", name], "--cookie-name", "name of a cookie attribute")

    def test_handlerWithoutColon(self) -> None:
        """
        A handler spec without C{:} is refused.
        """
        self.assertError(["--handler", "tests.handlers_for_tests"], "--handler", "MODULE:NAME")
        self.assertError(["--handler", ":Recorder"], "--handler", "MODULE:NAME")
        self.assertError(["--handler", "tests:"], "--handler", "MODULE:NAME")

    def test_handlerModuleMissing(self) -> None:
        """
        A handler in a module that cannot be imported is refused.
        """
        self.assertError(
            ["--handler", "no_such_module_here:Handler"],
            "--handler",
            "cannot import no_such_module_here",
        )

    def test_handlerAttributeMissing(self) -> None:
        """
        A handler name the module does not have is refused.
        """
        self.assertError(["--handler", "tests.handlers_for_tests:Missing"], "--handler", "has no Missing")

    def test_handlerNotCallable(self) -> None:
        """
        A handler that is not callable is refused.
        """
        self.assertError(
            ["--handler", "tests.handlers_for_tests:NOT_CALLABLE"],
            "--handler",
            "NOT_CALLABLE is not callable",
        )

    def test_emptyAllowedOrigin(self) -> None:
        """
        An empty C{--allowed-origin} is refused.
        """
        self.assertError(["--allowed-origin", " "], "--allowed-origin")

    def test_unknownOption(self) -> None:
        """
        An unknown option is refused.
        """
        self.assertError(["--bogus"], "--bogus")


class EnvironmentTests(SynchronousTestCase):
    """
    L{optionsFromEnvironment}: C{WSGLUE_*} variables for C{glue.tac}.
    """

    def test_nothingSet(self) -> None:
        """
        Without C{WSGLUE_*} variables the command line is empty; other
        variables are ignored.
        """
        self.assertEqual(optionsFromEnvironment(Options, {"PORT": "1", "HOME": "/"}), [])

    def test_unknownVariableRefused(self) -> None:
        """
        A C{WSGLUE_*} variable that names no option (a typo) is refused,
        naming it, rather than silently ignored; every option's own
        variable is known.
        """
        error = self.assertRaises(UsageError, optionsFromEnvironment, Options, {"WSGLUE_PROT": "tcp:8080"})
        self.assertIn("WSGLUE_PROT", str(error))
        every = {"WSGLUE_" + row[0].upper().replace("-", "_"): "1" for row in Options.optParameters + Options.optFlags}
        every["WSGLUE_ALLOWED_ORIGIN"] = "http://a.example"
        optionsFromEnvironment(Options, every)

    def test_port(self) -> None:
        """
        C{WSGLUE_PORT} is C{--port}.
        """
        argv = optionsFromEnvironment(Options, {"WSGLUE_PORT": "tcp:8080"})
        self.assertEqual(argv, ["--port=tcp:8080"])
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(options["port"], "tcp:8080")

    def test_dashAsUnderscore(self) -> None:
        """
        C{WSGLUE_BROADCAST_INTERVAL} is C{--broadcast-interval}.
        """
        argv = optionsFromEnvironment(Options, {"WSGLUE_BROADCAST_INTERVAL": "1"})
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(options["broadcast-interval"], 1.0)

    def test_valueWithSpacesAndEquals(self) -> None:
        """
        A value is passed whole, spaces and C{=} included.
        """
        argv = optionsFromEnvironment(Options, {"WSGLUE_BROADCAST_MESSAGE": "a = b"})
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(options["broadcast-message"], "a = b")

    def test_flagOn(self) -> None:
        """
        A flag set to 1, true, yes or on (any case) is given.
        """
        for value in ("1", "true", "YES", "On"):
            argv = optionsFromEnvironment(Options, {"WSGLUE_VERBOSE": value})
            self.assertEqual(argv, ["--verbose"], value)

    def test_flagOff(self) -> None:
        """
        A flag set to 0, false, no, off or nothing is not given.
        """
        for value in ("0", "false", "No", "off", ""):
            self.assertEqual(optionsFromEnvironment(Options, {"WSGLUE_VERBOSE": value}), [], value)

    def test_badFlagValue(self) -> None:
        """
        A flag set to anything else is a L{UsageError} naming the variable.
        """
        exc = self.assertRaises(UsageError, optionsFromEnvironment, Options, {"WSGLUE_VERBOSE": "maybe"})
        self.assertIn("WSGLUE_VERBOSE", str(exc))
        self.assertIn("maybe", str(exc))

    def test_allowedOriginList(self) -> None:
        """
        C{WSGLUE_ALLOWED_ORIGIN} takes a comma-separated list of patterns.
        """
        argv = optionsFromEnvironment(Options, {"WSGLUE_ALLOWED_ORIGIN": "https://a.example, https://b.example"})
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(options["allowed-origin"], ["https://a.example", "https://b.example"])

    def test_badValueNamesTheVariable(self) -> None:
        """
        L{parseEnvironment} reports a bad value by the variable the user
        set, not by the option it stands for.
        """
        exc = self.assertRaises(UsageError, parseEnvironment, Options(), {"WSGLUE_BROADCAST_INTERVAL": "abc"})
        self.assertEqual(str(exc), "WSGLUE_BROADCAST_INTERVAL must be a number of seconds, 0 or more, not 'abc'")
        exc = self.assertRaises(UsageError, parseEnvironment, Options(), {"WSGLUE_PORT": "tcp:99999"})
        self.assertTrue(str(exc).startswith("WSGLUE_PORT 'tcp:99999' is not a valid endpoint"), str(exc))
        self.assertNotIn("--port", str(exc))

    def test_parseEnvironment(self) -> None:
        """
        Good values from the environment are parsed as their options.
        """
        options = Options()
        parseEnvironment(options, {"WSGLUE_BROADCAST_INTERVAL": "2", "WSGLUE_VERBOSE": "1"})
        self.assertEqual((options["broadcast-interval"], options["verbose"]), (2.0, True))

    def test_badValueReported(self) -> None:
        """
        A bad value from the environment gives the usual L{UsageError}.
        """
        argv = optionsFromEnvironment(Options, {"WSGLUE_BROADCAST_INTERVAL": "-3"})
        exc = self.assertRaises(UsageError, Options().parseOptions, argv)
        self.assertIn("--broadcast-interval", str(exc))
