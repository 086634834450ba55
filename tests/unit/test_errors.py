"""One error tree: every ``AoskError`` subclass is reachable from ``aosk.errors`` and
drawn in its docstring, every other exception class is private, and the CLI maps each
error to the exit code its table documents."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import aosk
import aosk.errors
from aosk.errors import AoskError

# aosk.streams and aosk.projectors live outside aosk/ (package-dir), so walking aosk's
# own directory does not reach them: walk each package from its own __path__.
_PACKAGES = ("aosk", "aosk.streams", "aosk.projectors")


def _all_modules() -> list[ModuleType]:
    names: set[str] = set()
    for pkg_name in _PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        names.update(m.name for m in pkgutil.walk_packages(pkg.__path__, f"{pkg_name}.")
                     if not m.name.endswith(".__main__"))  # runs the CLI when imported
    return [importlib.import_module(n) for n in sorted(names)]


def _subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _subclasses(sub)
    return out


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> its parent's name, as drawn in aosk.errors' docstring."""
    lines = (aosk.errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "AoskError")
    tree: dict[str, str | None] = {"AoskError": None}
    stack = ["AoskError"]
    for line in lines[start + 1:]:
        m = re.match(r"^(\s*(?:\|\s*)*)\+-- (\w+)", line)
        if m is None:
            if line.strip() and not line.strip().startswith("|"):
                break  # the text after the drawing
            continue
        depth = (len(m.group(1)) - 5) // 5 + 1  # "+--" every 5 columns, the first in column 5
        del stack[depth:]
        tree[m.group(2)] = stack[-1]
        stack.append(m.group(2))
    return tree


def test_every_aosk_error_is_in_the_one_tree() -> None:
    _all_modules()
    tree = _drawn_tree()
    ours = sorted((c for c in _subclasses(AoskError) if c.__module__.startswith("aosk.")), key=lambda c: c.__name__)
    assert len(ours) >= 25
    for cls in ours:
        name = cls.__name__
        assert getattr(aosk.errors, name, None) is cls, f"{cls.__module__}.{name} is not defined in aosk.errors"
        assert name in aosk.errors.__all__, f"add {name} to aosk.errors.__all__"
        assert name in tree, f"draw {name} in the tree of aosk.errors' docstring"
        parent = tree[name]
        assert parent in {b.__name__ for b in cls.__bases__}, f"{name} is drawn under {parent}, derives {cls.__bases__}"
    drawn_only = set(tree) - {c.__name__ for c in ours} - {"AoskError"}
    assert not drawn_only, f"drawn in aosk.errors but no such AoskError: {sorted(drawn_only)}"


def test_old_import_paths_still_work() -> None:
    from aosk.client import ProjectionTimeout
    from aosk.events import InvalidSchemas
    from aosk.kernel import StateDecodeError
    from aosk.projectors.batch import Inconsistent
    from aosk.projectors.checkpoints import CheckpointError
    from aosk.projectors.db import MigrationError, ProjectionConfigError
    from aosk.projectors.history import HistoryError
    from aosk.projectors.memory import RecallError
    from aosk.projectors.replay import ReplayError
    from aosk.projectors.stored import UndecodableState
    from aosk.projectors.writer import Fenced
    from aosk.topics import TopicMismatch

    for cls in (ProjectionTimeout, InvalidSchemas, StateDecodeError, Inconsistent, CheckpointError, MigrationError,
                ProjectionConfigError, HistoryError, RecallError, ReplayError, UndecodableState, Fenced,
                TopicMismatch):
        assert getattr(aosk.errors, cls.__name__) is cls
    # the second base stays, for callers that catch the builtin
    assert issubclass(ProjectionTimeout, TimeoutError)
    assert issubclass(RecallError, ValueError) and issubclass(StateDecodeError, ValueError)


def test_no_public_exception_outside_the_tree() -> None:
    offenders = []
    for module in _all_modules():
        for name, obj in vars(module).items():
            if not (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__):
                continue
            internal = name.startswith("_") or (obj.__doc__ or "").startswith("Internal")
            if not issubclass(obj, AoskError) and not internal:
                offenders.append(f"{module.__name__}.{name}")
    assert not offenders, f"derive these from an AoskError in aosk/errors.py, or make them private: {offenders}"


def test_the_dev_stack_error_is_an_unavailable() -> None:
    assert issubclass(aosk.errors.DevStackError, aosk.errors.Unavailable)


def test_unavailable_messages_name_the_address_hide_the_password_and_say_what_to_do() -> None:
    k = aosk.errors.KafkaUnavailable("10.0.0.1:9092", "Failed to get metadata:\n  Local: Broker transport failure")
    assert "10.0.0.1:9092" in str(k) and "aosk dev up" in str(k) and "\n" not in str(k)
    for dsn in ("postgresql://aosk:s3cret@db:5432/aosk", "host=db port=5432 password=s3cret user=aosk",
                "host=db password='s3 cret' user=aosk"):
        p = aosk.errors.PostgresUnavailable(dsn, "connection refused\n\tIs the server running?")
        assert "s3" not in str(p) and "db" in str(p), str(p)
        assert "aosk dev up" in str(p) and "\n" not in str(p)


@pytest.mark.parametrize(("error", "code"), [
    (aosk.errors.ConfigError("k", "bad"), 2),
    (aosk.errors.TopicMismatch("differs"), 2),
    (aosk.errors.KafkaUnavailable("h:1", "down"), 3),
    (aosk.errors.PostgresUnavailable("postgresql://h:1/aosk", "down"), 3),
    (aosk.errors.DevStackError("initdb failed"), 3),
    (aosk.errors.ReplayError("a shadow exists"), 1),
    (aosk.errors.SchemaNotFound("nope"), 1),
    (aosk.errors.JournalMismatch("aosk", "a.agent-events", "b.agent-events"), 1),
    (aosk.errors.NoSuchAgent("x", "no such agent: 'x'"), 1),
    (aosk.errors.PartitionStopped("a.agent-events", 3, 17, aosk.errors.UnknownFingerprint(b"\xee" * 8)), 1),
    (AoskError("anything else"), 1),
])
def test_each_error_has_one_exit_code(error: AoskError, code: int) -> None:
    from aosk.cli import exit_code

    assert exit_code(error) == code


def test_the_exit_codes_are_documented() -> None:
    from pathlib import Path

    from aosk.cli import EXIT_CODES, build_parser
    from aosk.streams.worker import EXIT_DELIVERY_FAILED, EXIT_STOP_TIMEOUT

    epilog = build_parser().epilog or ""
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "recovery.md").read_text()
    section = runbook.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in {c for _cls, c in EXIT_CODES} | {0, EXIT_STOP_TIMEOUT, EXIT_DELIVERY_FAILED, 130}:
        assert re.search(rf"^  {code}\s", epilog, re.M), f"exit code {code} is not in aosk --help"
        assert f"| {code} |" in section, f"exit code {code} is not in docs/recovery.md"


def test_reader_refusals_say_what_to_do() -> None:
    stopped = aosk.errors.PartitionStopped("a.agent-events", 3, 17, aosk.errors.UnknownFingerprint(b"\xee" * 8))
    assert "partition 3 of a.agent-events is stopped at offset 17" in str(stopped)
    assert "eeeeeeeeeeeeeeee" in str(stopped) and "`aosk journal quarantine 3:17 --reason TEXT`" in str(stopped)
    newer = aosk.errors.PartitionStopped("a.agent-events", 0, 5, aosk.errors.UnknownFoldVersion(9, (1, 2)))
    assert "fold version 9" in str(newer) and "deploy the newer aosk" in str(newer)
    assert "AOSK_TOPIC_PREFIX=a" in str(aosk.errors.JournalMismatch("s", "a.agent-events", "b.agent-events"))
    assert "aosk db migrate --schema nope" in str(aosk.errors.SchemaNotFound("nope"))


def test_fenced_says_whether_another_projector_moved_on_or_the_database_lost_commits() -> None:
    from aosk.errors import Fenced

    ahead = Fenced(3, 100, stored=140, owner="node-2/77", me="node-1/12")
    assert not ahead.rolled_back
    assert str(ahead) == ("partition 3: another projector advanced the offsets past ours (140 > 100 (owner "
                          "node-2/77)); it owns the partition now")
    behind = Fenced(3, 100, stored=60, owner="node-1/12", me="node-1/12")
    assert behind.rolled_back
    assert str(behind).startswith("partition 3: the stored offset 60 is behind what this process committed (100) "
                                  "(written last by this process): the database lost committed transactions")
    assert "re-reading from the stored offset" in str(behind)
    assert "no row" in str(Fenced(3, 100)) and not Fenced(3, 100).rolled_back
