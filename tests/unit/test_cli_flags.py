"""Every ``aosk`` command spells a shared flag the same way, old spellings still parse
(hidden), and the CLI's defaults are the options dataclasses' (aosk/cli/_flags.py)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from aosk.cli import build_parser
from aosk.cli._flags import FORMATS, HIDDEN_ALIASES, LOG_LEVELS
from aosk.projectors.db import DEFAULT_SCHEMA
from aosk.projectors.replay import ReplayOptions
from aosk.projectors.runner import ProjectorOptions
from aosk.streams.worker import WorkerOptions

# dest -> the only option strings that may show for it, in any command.
CANONICAL = {
    "schema": ("--schema",),
    "log_level": ("--log-level", "-l"),
    "batch_max": ("--batch-max",),
    "processes": ("--processes",),
    "no_progress": ("--no-progress",),
    "format": ("--format",),
    "agent": ("--agent",),
    "tenant": ("--tenant",),
    "events": ("--events",),
    "agents": ("--agents",),
    "repeat": ("--repeat",),
    "output": ("--output",),
}
# Spellings of those concepts that must never show (an alias may parse, hidden).
SYNONYMS = (
    "--loglevel", "--log_level", "--verbosity", "--batch-size", "--batch_max", "--batchmax", "--max-batch",
    "--procs", "--nprocs", "--num-processes", "--jobs", "-j", "--noprogress", "--no-progress-bar", "--quiet",
    "--output-format", "--fmt", "--json", "--agent-id", "--tenant-id", "--schema-name", "--db-schema", "--out",
)
# A value each hidden alias is parsed with, and what it must come out as.
ALIAS_SAMPLES = {"--loglevel": ("warn", "warning")}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command parser with the words that reach it, nested subcommands included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for a in subs:
        for name, child in a.choices.items():
            yield from _commands(child, (*path, name))


def _options(parser: argparse.ArgumentParser, *, visible: bool) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and (a.help != argparse.SUPPRESS) == visible]


COMMANDS = list(_commands(build_parser()))
IDS = [" ".join(path) for path, _ in COMMANDS]


def test_every_command_is_walked() -> None:
    names = set(IDS)
    assert {"worker", "project", "replay", "db migrate", "bench project", "bench replay", "memory search",
            "state", "events tail"} <= names, names


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_shared_concepts_show_only_their_canonical_spelling(path: tuple[str, ...],
                                                           parser: argparse.ArgumentParser) -> None:
    help_text = parser.format_help()
    for action in _options(parser, visible=True):
        if action.dest in CANONICAL:
            assert tuple(action.option_strings) == CANONICAL[action.dest], (path, action.option_strings)
        for spelling in action.option_strings:
            assert spelling not in SYNONYMS, (path, spelling)
            assert spelling not in HIDDEN_ALIASES, (path, spelling)
    for spelling in (*SYNONYMS, *HIDDEN_ALIASES):
        assert not re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", help_text), (path, spelling)


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_shared_concepts_take_the_same_values(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    for action in _options(parser, visible=True):
        if action.dest == "schema":
            assert action.default == DEFAULT_SCHEMA, path
        elif action.dest == "format":
            assert (tuple(action.choices or ()), action.default) == (FORMATS, "text"), path
        elif action.dest == "log_level":
            assert tuple(action.choices or ()) == LOG_LEVELS, path
        elif action.dest in ("agent", "tenant"):
            assert action.metavar == "ID", path
        elif action.dest == "no_progress":
            assert isinstance(action, argparse._StoreTrueAction), path


def test_no_option_is_spelled_two_ways_across_commands() -> None:
    """Two visible spellings equal but for dashes, underscores and case are one concept."""
    by_key: dict[str, set[str]] = {}
    for _path, parser in COMMANDS:
        for action in _options(parser, visible=True):
            for spelling in action.option_strings:
                by_key.setdefault(re.sub(r"[-_]", "", spelling.lower()), set()).add(spelling)
    assert {k: v for k, v in by_key.items() if len(v) > 1} == {}


def test_hidden_aliases_parse_to_the_canonical_dest() -> None:
    assert set(ALIAS_SAMPLES) == set(HIDDEN_ALIASES)
    seen = 0
    for path, parser in COMMANDS:
        hidden = {s: a for a in _options(parser, visible=False) for s in a.option_strings}
        shown = {s: a for a in _options(parser, visible=True) for s in a.option_strings}
        for alias, canonical in HIDDEN_ALIASES.items():
            if canonical not in shown:
                assert alias not in hidden, (path, alias)
                continue
            assert hidden[alias].dest == shown[canonical].dest, (path, alias)
            value, parsed = ALIAS_SAMPLES[alias]
            # a command's required positionals (``aosk backup create DIR``) get a placeholder
            words = [*path, *("x" for a in parser._actions if not a.option_strings and a.required)]
            args = build_parser().parse_args([*words, alias, value])
            assert getattr(args, shown[canonical].dest) == parsed, (path, alias)
            # Not given: the canonical option's default holds.
            default = build_parser().parse_args(words)
            assert getattr(default, shown[canonical].dest) == shown[canonical].default, path
            seen += 1
    assert seen >= 3  # worker, project, replay


@pytest.mark.parametrize("cmd", ["worker", "project", "replay"])
def test_log_level_spellings(cmd: str) -> None:
    parse = build_parser().parse_args
    assert parse([cmd, "--log-level", "DEBUG"]).log_level == "debug"
    assert parse([cmd, "-l", "crit"]).log_level == "critical"
    assert parse([cmd, "--loglevel", "error"]).log_level == "error"
    with pytest.raises(SystemExit):
        parse([cmd, "--log-level", "loud"])


def test_defaults_are_the_options_dataclasses() -> None:
    parse = build_parser().parse_args
    p, r, w = ProjectorOptions(), ReplayOptions(), WorkerOptions()

    project = parse(["project"])
    assert (project.schema, project.batch_max, project.poll_ms / 1000, project.transaction_timeout,
            project.max_cached_agents) == (p.schema, p.batch_max, p.poll_timeout_s, p.transaction_timeout_s,
                                           p.max_cached_agents)
    assert project.log_level == "info"

    replay = parse(["replay"])
    assert (replay.schema, replay.batch_max, replay.swap_gap, replay.processes) == (
        r.schema, r.batch_max, r.swap_gap, r.processes)
    assert not replay.no_progress  # the bar is the CLI's (the library calls progress(done, total))
    assert replay.log_level == "warning"

    worker = parse(["worker"])
    assert (worker.batch_max, worker.batch_wait_ms / 1000, worker.commit_interval_ms / 1000) == (
        w.batch_max, w.batch_wait_s, w.commit_interval_s)
    assert worker.log_level == "info"

    bench = parse(["bench", "replay"])
    assert (bench.batch_max, bench.replay_processes) == (r.batch_max, r.processes)


def test_bench_defaults_are_the_benchmark_functions() -> None:
    import inspect

    from aosk.bench.ingest import bench_ingest
    from aosk.bench.project import bench_project
    from aosk.bench.replay import bench_replay
    from aosk.bench.worker import bench_worker

    parse = build_parser().parse_args
    for name, func in (("ingest", bench_ingest), ("project", bench_project), ("replay", bench_replay),
                       ("worker", bench_worker)):
        args = parse(["bench", name])
        params = inspect.signature(func).parameters
        for dest in ("events", "agents", "processes", "repeat", "latency_seconds", "rates"):
            if hasattr(args, dest):
                assert getattr(args, dest) == params[dest].default, (name, dest)
        assert args.no_progress is False


# --- argument validators (argparse type=) and usage errors in one line ----------------------

def test_positive_int_and_journal_offset() -> None:
    from aosk.cli._flags import journal_offset, positive_int

    assert positive_int("1") == 1 and positive_int("10") == 10
    assert journal_offset("0") == 0 and journal_offset("17") == 17
    for bad, func, words in [("0", positive_int, ">= 1"), ("-3", positive_int, ">= 1"), ("x", positive_int, "whole"),
                             ("-1", journal_offset, "start at 0"), ("1.5", journal_offset, "whole")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            func(bad)


def test_at_time_accepts_epoch_ms_and_iso_8601_up_to_now() -> None:
    from aosk.cli.state import at_time

    now = 1_795_595_400_000  # 2026-11-25T08:30:00Z
    assert at_time("1795595400000", now_ms=now) == now
    assert at_time("2026-11-25T08:30:00Z", now_ms=now) == now
    assert at_time("2026-11-25T09:30:00+01:00", now_ms=now) == now
    assert at_time("2026-11-25T08:30:00", now_ms=now) == now  # no zone: UTC
    for bad, words in [("yesterday", "epoch milliseconds"), ("2026-11-25T08:30:01Z", "in the future"),
                       (str(now + 1), "in the future"), ("-5", "before 1970")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            at_time(bad, now_ms=now)


@pytest.mark.parametrize("argv", [
    ["state", "a", "--at-offset", "-1"], ["state", "a"], ["db", "thin-checkpoints", "--keep-last", "0"],
    ["db", "nosuchaction"],
])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"aosk {argv[0]}") and "--help`" in err, err


def _signature(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    return [(tuple(a.option_strings), a.dest, a.default, a.nargs, a.required) for a in parser._actions
            if not isinstance(a, argparse._SubParsersAction)]


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_a_command_parses_the_same_with_only_its_own_module_loaded(path: tuple[str, ...],
                                                                  parser: argparse.ArgumentParser) -> None:
    """``aosk CMD ...`` registers only CMD's module (aosk.cli.command_of): the command it
    gets has every flag, default and subcommand of the full parser's."""
    from aosk.cli import COMMAND_MODULES, command_of

    assert command_of(list(path)) == path[0] and path[0] in COMMAND_MODULES
    alone = dict(_commands(build_parser(path[0])))
    assert set(alone) == {p for p, _ in COMMANDS if p[0] == path[0]}
    assert _signature(alone[path]) == _signature(parser)


@pytest.mark.parametrize(("argv", "command"), [
    (["worker", "--batch-max", "5"], "worker"),
    (["--config", "c.yaml", "cluster", "status"], "cluster"),
    (["--config=c.yaml", "node"], "node"),
    ([], None), (["--help"], None), (["-h", "worker"], None), (["wokrer"], None), (["--config"], None),
])
def test_the_command_is_found_before_the_parser_is_built(argv: list[str], command: str | None) -> None:
    from aosk.cli import command_of

    assert command_of(argv) == command
