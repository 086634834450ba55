"""The ``aosk`` command line. One module per command group; each has ``register``.

Exit codes are one table, ``EXIT_CODES`` (the first matching class wins), shown in
``aosk --help`` and in docs/recovery.md ("Exit codes").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from aosk.errors import AoskError, ConfigError, TopicMismatch, Unavailable
from aosk.streams.worker import EXIT_DELIVERY_FAILED, EXIT_STOP_TIMEOUT

# Modules under aosk.cli that each define register(subparsers).
COMMAND_MODULES = (
    "dev", "topics", "events", "worker", "project", "db", "audit", "memory", "state", "fork", "replay",
    "kernel", "journal", "health", "keys", "api", "task", "runtime", "node", "cluster", "bench", "demo", "backup",
)

EXIT_PROBLEM: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130

# Error class -> exit code, most specific first: the first class the error is an
# instance of decides. Every AoskError not listed here is EXIT_PROBLEM.
EXIT_CODES: Final[tuple[tuple[type[AoskError], int], ...]] = (
    (ConfigError, EXIT_USAGE),
    (TopicMismatch, EXIT_USAGE),
    (Unavailable, EXIT_UNAVAILABLE),
    (AoskError, EXIT_PROBLEM),
)

EXIT_CODES_HELP: Final = f"""\
exit codes:
  0    success
  {EXIT_PROBLEM}    the command ran and found a problem (e.g. a broken audit chain), or
       failed with another AOSK error
  {EXIT_USAGE}    bad usage (a flag or argument argparse refuses) or configuration
       (ConfigError, TopicMismatch)
  {EXIT_UNAVAILABLE}    Kafka or PostgreSQL cannot be reached, or the dev stack cannot start
       (Unavailable: KafkaUnavailable, PostgresUnavailable, DevStackError)
  {EXIT_STOP_TIMEOUT}   aosk worker: a stop could not commit within its stop timeout
  {EXIT_DELIVERY_FAILED}   aosk worker: the broker refused a record the worker produced
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def exit_code(error: AoskError) -> int:
    """The exit status the CLI ends with when ``error`` reaches it."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, naming the command's ``--help`` instead of
    printing its (often several lines long) usage; exit ``EXIT_USAGE``. Subcommand
    parsers are of the same class (``add_subparsers`` makes them so)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="aosk", description="AOSK, the Agent OS Kernel",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="config.yaml (default: $AOSK_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"aosk.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from aosk.config import load_settings

        settings = load_settings(args.config)
        code = args.run(settings, args)
    except AoskError as e:
        prefix = "configuration error: " if isinstance(e, ConfigError) else ""
        print(f"aosk: {prefix}{e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("aosk: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
