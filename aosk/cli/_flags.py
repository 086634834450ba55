"""The flags several ``aosk`` commands share, spelled one way everywhere.

Every command adds a shared flag through the function here, so ``--help`` shows one
spelling per concept and one default per setting. The canonical spellings:

==========================  ==========================================================
``--schema NAME``           the projection schema (default ``aosk``)
``--log-level/-l LEVEL``    debug, info, warning, error or critical; the default is
                            the command's (a daemon logs info, a one-shot tool warning)
``--batch-max N``           most records per batch; the default is the field of the
                            command's options dataclass
``--processes N``           processes doing the command's work; default as above
``--no-progress``           no progress bar or progress lines (scripts, CI logs)
``--format {text,json}``    output format, text by default
``--agent ID``              one agent; ``--tenant ID`` one tenant
``--events N``              (benchmarks) how many events; ``--agents N`` over how many agents
``--repeat N``              (benchmarks) runs whose median is reported
``--output PATH``           (benchmarks) the markdown file the figures are written to
==========================  ==========================================================

Old spellings keep working as hidden aliases (``HIDDEN_ALIASES``): the same ``dest``,
left out of ``--help`` and usage, so scripts written against them do not break. The
level names ``warn`` and ``crit`` are read as ``warning`` and ``critical``.

Defaults are read from the options dataclasses (``field_default``) or the function the
command calls (``param_default``), never written again here: a changed default then
shows in ``--help`` by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from aosk._logging import LOG_FORMAT, configure_logging

HIDDEN_ALIASES: Final[Mapping[str, str]] = MappingProxyType({
    "--loglevel": "--log-level",
})
"""Old spelling -> canonical spelling; still parsed, never shown."""

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_LEVEL_NAMES: Final[Mapping[str, str]] = MappingProxyType({"warn": "warning", "crit": "critical"})
FORMATS: Final = ("text", "json")
BENCH_OUTPUT: Final = Path("docs/benchmarks.md")


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (a plain default, not a factory)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.{name} has no plain default to show in --help")
            return f.default
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def param_default(func: Callable[..., Any], name: str) -> Any:
    """The default of ``func``'s keyword parameter ``name``."""
    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{func.__qualname__}({name}=...) has no default to show in --help")
    return default


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags)`` plus every hidden alias of ``flags[0]``."""
    action = parser.add_argument(*flags, **kwargs)
    aliases = [old for old, new in HIDDEN_ALIASES.items() if new == flags[0]]
    if aliases:
        # argparse cannot hide one spelling of a visible option: a second option with the
        # same dest, help suppressed; its default is suppressed so the first one's holds.
        same = {k: v for k, v in kwargs.items() if k in ("type", "choices", "action", "nargs", "const")}
        parser.add_argument(*aliases, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **same)
    return action


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be at least 1."""
    n = _integer(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not allowed; give a whole number >= 1")
    return n


def journal_offset(text: str) -> int:
    """argparse ``type=`` for a journal offset: 0 or more (offsets of a partition start at 0)."""
    n = _integer(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; journal offsets start at 0")
    return n


def _log_level(text: str) -> str:
    t = text.lower()
    return _LEVEL_NAMES.get(t, t)


def add_log_level(parser: argparse.ArgumentParser, *, default: str) -> None:
    """``--log-level/-l``; ``default`` is the command's (give the reason where it is chosen)."""
    assert default in LOG_LEVELS, default
    _add(parser, "--log-level", "-l", type=_log_level, choices=LOG_LEVELS, default=default, metavar="LEVEL",
         help=f"{', '.join(LOG_LEVELS)} (default %(default)s)")


def add_schema(parser: argparse.ArgumentParser, *, help: str = "projection schema") -> None:
    from aosk.projectors.db import DEFAULT_SCHEMA  # psycopg: only for the commands that take --schema

    _add(parser, "--schema", default=DEFAULT_SCHEMA, metavar="NAME", help=f"{help} (default %(default)s)")


def add_batch_max(parser: argparse.ArgumentParser, *, default: int, help: str) -> None:
    _add(parser, "--batch-max", type=int, default=default, metavar="N", help=f"{help} (default %(default)s)")


def add_processes(parser: argparse.ArgumentParser, *, default: int, help: str) -> None:
    _add(parser, "--processes", type=int, default=default, metavar="N", help=f"{help} (default %(default)s)")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--no-progress", action="store_true", help="no progress bar or progress lines")


def add_format(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--format", choices=FORMATS, default=FORMATS[0], help="output format (default %(default)s)")


def add_agent(parser: argparse.ArgumentParser, *, help: str) -> None:
    _add(parser, "--agent", metavar="ID", help=help)


def add_tenant(parser: argparse.ArgumentParser, *, help: str) -> None:
    _add(parser, "--tenant", metavar="ID", help=help)


def add_events(parser: argparse.ArgumentParser, *, default: int) -> None:
    _add(parser, "--events", type=int, default=default, metavar="N",
         help="events in the benchmark's journal (default %(default)s)")


def add_agents(parser: argparse.ArgumentParser, *, default: int) -> None:
    _add(parser, "--agents", type=int, default=default, metavar="N",
         help="agents the events are spread over (default %(default)s)")


def add_repeat(parser: argparse.ArgumentParser, *, default: int, help: str) -> None:
    _add(parser, "--repeat", type=int, default=default, metavar="N", help=f"{help} (default %(default)s)")


def add_output(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--output", type=Path, default=BENCH_OUTPUT, metavar="PATH",
         help="markdown file to update (default %(default)s)")


__all__ = [
    "BENCH_OUTPUT", "FORMATS", "HIDDEN_ALIASES", "LOG_FORMAT", "LOG_LEVELS", "add_agent", "add_agents",
    "add_batch_max", "add_events", "add_format", "add_log_level", "add_no_progress", "add_output",
    "add_processes", "add_repeat", "add_schema", "add_tenant", "configure_logging", "field_default", "journal_offset",
    "param_default", "positive_int",
]


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port``: serve Prometheus metrics at ``/metrics`` on that port (off by default)."""
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics (default: not served)")
