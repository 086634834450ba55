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

# Modules under aosk.cli that each define register(subparsers); each registers the
# command of its own name.
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

def exit_codes_help() -> str:
    """The exit-code table of ``aosk --help``. It names the worker's own codes, whose module
    (the whole stream worker) is imported only for the full help, not for every command."""
    from aosk.streams.worker import EXIT_DELIVERY_FAILED, EXIT_STOP_TIMEOUT

    return f"""\
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone: each command module imports
    what its command runs (FastAPI, the stream worker, the benchmarks ...), and a process
    that runs one command (every child of ``aosk node`` is one) need not import the rest."""
    import importlib

    names = COMMAND_MODULES if command is None else (command,)
    parser = _Parser(prog="aosk", description="AOSK, the Agent OS Kernel",
                     epilog=exit_codes_help() if command is None else None,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", help="config.yaml (default: $AOSK_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in names:
        importlib.import_module(f"aosk.cli.{name}").register(sub)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, when it is one of COMMAND_MODULES and comes after only
    ``--config PATH`` (or ``--config=PATH``); None otherwise (no command, ``--help``, a
    typo), for which the full parser gives the full help or its error."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            i += 2
        elif arg.startswith("--config="):
            i += 1
        else:
            return arg if arg in COMMAND_MODULES else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(words))
    args = parser.parse_args(words)
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
