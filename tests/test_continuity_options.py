"""
Tests for the continuity and presence options: C{--history-size},
C{--history-bytes}, C{--history-ttl}, C{--presence-grace}, and how
C{makeService} hands them to the registry.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from wsglue.registry import SessionRegistry
from wsglue.tap import Options, configureContinuity


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class ContinuityOptionsTests(SynchronousTestCase):
    """
    The options, their defaults and their errors.
    """

    def test_defaults(self) -> None:
        """
        100 messages, 256 KiB and 120 seconds of history; 30 seconds of
        presence grace.
        """
        o = parse()
        self.assertEqual(
            (o["history-size"], o["history-bytes"], o["history-ttl"], o["presence-grace"]),
            (100, 262144, 120.0, 30.0),
        )

    def test_values(self) -> None:
        """
        Each option takes its value.
        """
        o = parse("--history-size", "5", "--history-bytes", "1000", "--history-ttl", "2.5", "--presence-grace", "0")
        self.assertEqual(
            (o["history-size"], o["history-bytes"], o["history-ttl"], o["presence-grace"]),
            (5, 1000, 2.5, 0.0),
        )

    def test_errors(self) -> None:
        """
        A bad value is one line naming the option and the value.
        """
        for option, bad, words in [
            ("history-size", "-1", "whole number"),
            ("history-size", "1.5", "whole number"),
            ("history-bytes", "lots", "whole number"),
            ("history-ttl", "-3", "seconds"),
            ("history-ttl", "nan", "seconds"),
            ("presence-grace", "soon", "seconds"),
        ]:
            exc = self.assertRaises(UsageError, Options().parseOptions, [f"--{option}", bad])
            message = str(exc)
            for fragment in (f"--{option}", repr(bad), words):
                self.assertIn(fragment, message)
            self.assertNotIn("\n", message)

    def test_wired(self) -> None:
        """
        The registry gets a history with the bounds given, and the grace.
        """
        registry = SessionRegistry()
        clock = Clock()
        configureContinuity(
            registry,
            parse("--history-size", "7", "--history-bytes", "9", "--history-ttl", "3", "--presence-grace", "4"),
            clock,
        )
        assert registry.history is not None
        self.assertEqual((registry.history.size, registry.history.bytes, registry.history.ttl), (7, 9, 3.0))
        self.assertIs(registry.history.clock, clock)
        self.assertIsNotNone(registry.broadcastStream)
        self.assertEqual(registry.presenceGrace, 4.0)

    def test_sizeZeroTurnsContinuityOff(self) -> None:
        """
        C{--history-size 0}: no history, no broadcast stream.
        """
        registry = SessionRegistry()
        configureContinuity(registry, parse("--history-size", "0"), Clock())
        self.assertIsNone(registry.history)
        self.assertIsNone(registry.broadcastStream)


class EnvironmentTests(SynchronousTestCase):
    """
    The variables of C{glue.tac}.
    """

    def test_variables(self) -> None:
        """
        C{WSGLUE_HISTORY_SIZE} and its siblings set the options; a bad value
        names the variable.
        """
        from wsglue.tap import parseEnvironment

        o = Options()
        parseEnvironment(
            o,
            {
                "WSGLUE_HISTORY_SIZE": "3",
                "WSGLUE_HISTORY_BYTES": "4",
                "WSGLUE_HISTORY_TTL": "5",
                "WSGLUE_PRESENCE_GRACE": "6",
            },
        )
        self.assertEqual(
            (o["history-size"], o["history-bytes"], o["history-ttl"], o["presence-grace"]), (3, 4, 5.0, 6.0)
        )
        exc = self.assertRaises(UsageError, parseEnvironment, Options(), {"WSGLUE_HISTORY_TTL": "x"})
        self.assertIn("WSGLUE_HISTORY_TTL", str(exc))
