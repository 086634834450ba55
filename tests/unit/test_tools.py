"""Tools: the registry (specs from @tool, schemas from hints or given, entry points,
duplicates, the OpenAI format, capabilities) and the runner with real worker processes
(results, every kind of failure, kills at the timeout, the pool after a kill)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from aosk.config import ToolsSettings, load_settings
from aosk.errors import DuplicateTool, ToolError
from aosk.runtime.builtin_tools import BUILTIN_TOOLS
from aosk.runtime.tools import TRUNCATION_MARKER, FailureKind, ToolRegistry, ToolRunner, spec_of, tool
from sample_tools import (
    big,
    exit_now,
    fail,
    greet,
    greet_again,
    nan,
    not_json,
    sleep_past_timeout,
    spawn_and_sleep,
    sum_numbers,
)

SAMPLES = (greet, sum_numbers, fail, sleep_past_timeout, spawn_and_sleep, exit_now, big, not_json, nan)


@pytest.fixture(scope="module")
def runner() -> Iterator[ToolRunner]:
    with ToolRunner(ToolRegistry([*SAMPLES, *BUILTIN_TOOLS]), settings=ToolsSettings(workers=2)) as r:
        yield r


def _wait_until(condition: Callable[[], bool], *, deadline_s: float = 5.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (in a container PID 1 may never reap an orphan)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- the registry ----------------------------------------------------------------------------


def test_the_schema_comes_from_the_type_hints_and_the_description_from_the_docstring() -> None:
    spec = spec_of(greet)
    assert spec.name == "greet" and spec.description == "Greet someone."
    assert spec.context_parameter == "context" and spec.timeout_s is None and spec.max_result_bytes is None
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "punctuation": {"enum": ["!", "."], "default": "!"},
            "times": {"type": "integer", "default": 1},
        },
        "required": ["name"],
        "additionalProperties": False,
    }


def test_hints_map_to_json_schema_types() -> None:
    def f(a: list[int], b: dict[str, float] | None, c: bool, d: Any, e: float = 0.5) -> None:
        """Doc."""

    props = spec_of(tool(f)).parameters["properties"]
    assert props == {
        "a": {"type": "array", "items": {"type": "integer"}},
        "b": {"anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}]},
        "c": {"type": "boolean"},
        "d": {},
        "e": {"type": "number", "default": 0.5},
    }


def test_an_explicit_schema_and_limits_are_kept() -> None:
    spec = spec_of(sum_numbers)
    assert spec.name == "sum-numbers" and spec.description == "Add numbers." and spec.timeout_s == 5.0
    assert spec.parameters["properties"]["numbers"]["minItems"] == 1


def _no_hint(x) -> None:  # type: ignore[no-untyped-def]
    """Doc."""


def _star(*values: int) -> None:
    """Doc."""


def _path(p: Path) -> None:
    """Doc."""


def _undocumented(x: int) -> None:
    pass


def _two(x: int, y: int = 0) -> None:
    """Doc."""


@pytest.mark.parametrize(("fn", "options", "match"), [
    (_no_hint, {}, "annotate parameter x"),
    (_star, {}, "passed by keyword"),
    (_path, {}, "no JSON schema for parameter p"),
    (_undocumented, {}, "has no description"),
    (_two, {"name": "has space"}, "letters, digits"),
    (_two, {"timeout_s": 0}, "timeout_s must be positive"),
    (_two, {"max_result_bytes": 10}, "at least 256"),
    (_two, {"parameters": {"type": "array"}}, "of type 'object'"),
    (_two, {"parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}, "not a valid JSON schema"),
    (_two, {"parameters": {"type": "object", "properties": {"z": {}}, "required": ["x"]}}, r"\['z'\].*not parameters"),
    (_two, {"parameters": {"type": "object", "properties": {"x": {}}}}, r"\['x'\] have no default"),
])
def test_a_tool_that_cannot_work_is_refused_when_it_is_defined(fn: Callable[..., Any], options: dict[str, Any],
                                                                match: str) -> None:
    with pytest.raises(ToolError, match=match):
        tool(**options)(fn)


def test_a_registry_refuses_duplicate_names_and_what_a_worker_cannot_import() -> None:
    with pytest.raises(DuplicateTool, match="'greet' is registered twice, by sample_tools.greet and by "
                                            "sample_tools.greet_again"):
        ToolRegistry([greet, greet_again])
    assert list(ToolRegistry([greet, greet])) == ["greet"]  # the same function twice is one tool

    @tool
    def nested(x: int) -> int:
        """Doc."""
        return x

    with pytest.raises(ToolError, match="define it at module level"):
        ToolRegistry([nested])
    with pytest.raises(ToolError, match="is not a tool; mark it with @tool"):
        ToolRegistry([_two])


def test_the_openai_format_and_the_tools_capabilities_allow() -> None:
    registry = ToolRegistry([greet, sum_numbers, *BUILTIN_TOOLS])
    assert list(registry) == ["calculator", "echo", "greet", "sum-numbers", "word_count"]
    allowed = registry.allowed(["sum-numbers", "greet", "send_message"])  # not a tool here: ignored
    assert list(allowed) == ["greet", "sum-numbers"] and "calculator" not in allowed
    tools = allowed.openai_tools()
    assert tools[1] == {"type": "function", "function": {
        "name": "sum-numbers", "description": "Add numbers.", "parameters": spec_of(sum_numbers).parameters}}
    tools[1]["function"]["parameters"]["properties"].clear()  # a copy: the spec is unchanged
    assert spec_of(sum_numbers).parameters["properties"]


def test_entry_points_name_a_tool_or_a_list_of_tools() -> None:
    group = "aosk.tools"
    registry = ToolRegistry.discover([sum_numbers], entry_points=[
        EntryPoint(name="greet", value="sample_tools:greet", group=group),
        EntryPoint(name="builtins", value="aosk.runtime.builtin_tools:BUILTIN_TOOLS", group=group),
    ])
    assert list(registry) == ["calculator", "echo", "greet", "sum-numbers", "word_count"]
    with pytest.raises(ToolError, match="names posix.getpid, which is not a @tool function"):
        ToolRegistry.discover(entry_points=[EntryPoint(name="pid", value="os:getpid", group=group)])
    with pytest.raises(ToolError, match="entry point gone = no_such_module:x .* does not load: ModuleNotFoundError"):
        ToolRegistry.discover(entry_points=[EntryPoint(name="gone", value="no_such_module:x", group=group)])


def test_an_installed_distribution_ships_tools_that_workers_run(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_tools.py").write_text(
        "from aosk.runtime.tools import tool\n\n\n"
        "@tool\ndef shout(text: str) -> str:\n    '''Upper-case the text.'''\n    return text.upper()\n")
    dist = tmp_path / "acme_tools-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[aosk.tools]\nshout = acme_tools:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    registry = ToolRegistry.discover()
    # this project's own tools come through the same group (pyproject.toml)
    assert {"shout", "calculator", "echo", "word_count"} <= set(registry)
    with ToolRunner(registry.allowed(["shout"]), settings=ToolsSettings(workers=1)) as runner:
        result = runner.run("c-1", "shout", '{"text": "hi"}')
    assert result.ok and json.loads(result.content) == "HI"


def test_the_tools_settings_come_from_the_environment() -> None:
    s = load_settings(environ={"AOSK_TOOLS_TIMEOUT_S": "2.5", "AOSK_TOOLS_MAX_RESULT_BYTES": "4096",
                               "AOSK_TOOLS_WORKERS": "3"})
    assert (s.tools.timeout_s, s.tools.max_result_bytes, s.tools.workers) == (2.5, 4096, 3)
    assert load_settings(environ={}).tools == ToolsSettings()


# --- running calls ---------------------------------------------------------------------------


def test_a_call_runs_in_a_worker_process_and_the_tool_sees_the_call_id(runner: ToolRunner) -> None:
    result = runner.run("call-17", "greet", '{"name": "ada", "punctuation": "."}')
    assert result.ok and result.error is None and not result.truncated
    value = json.loads(result.content)
    assert value["greeting"] == "hello ada." and value["call_id"] == "call-17"
    assert value["pid"] != os.getpid()
    assert (result.call_id, result.name) == ("call-17", "greet")
    assert json.loads(runner.run("c", "sum-numbers", '{"numbers": [1, 2.5]}').content) == 3.5
    assert json.loads(runner.run("c", "echo", '{"text": "x"}').content) == {"text": "x", "call_id": "c"}
    assert json.loads(runner.run("c", "calculator", '{"expression": "2 * (3 + 4) ** 2 - sqrt(16)"}').content) == 94
    assert json.loads(runner.run("c", "word_count", '{"text": "a b\\nc"}').content) == {
        "words": 3, "lines": 2, "characters": 5}


@pytest.mark.parametrize(("name", "arguments", "match"), [
    ("greet", '{"name": 5}', "$.name: 5 is not of type 'string'"),
    ("greet", "{}", "'name' is a required property"),
    ("greet", '{"name": "a", "context": "forged"}', "Additional properties are not allowed"),
    ("greet", '{"name": "a", "punctuation": "?"}', "$.punctuation: '?' is not one of"),
    ("sum-numbers", '{"numbers": []}', "$.numbers: [] should be non-empty"),
    ("greet", '{"name": ', "the arguments are not JSON"),
    ("greet", "[1]", "must be a JSON object, not list"),
])
def test_invalid_arguments_are_refused_before_the_tool_runs(runner: ToolRunner, name: str, arguments: str,
                                                            match: str) -> None:
    result = runner.run("c", name, arguments)
    assert result.error is not None and result.error.kind is FailureKind.INVALID_ARGUMENTS
    assert match in result.error.message
    assert json.loads(result.content) == {"error": {"kind": "invalid_arguments", "message": result.error.message}}


def test_an_unknown_tool_is_a_result(runner: ToolRunner) -> None:
    result = runner.run("c", "rm_rf", "{}")
    assert result.error is not None and result.error.kind is FailureKind.UNKNOWN_TOOL
    assert "no tool named 'rm_rf'" in result.error.message and "'greet'" in result.error.message


def test_an_exception_is_a_result_with_its_message(runner: ToolRunner) -> None:
    result = runner.run("c", "fail", '{"message": "the disk is full"}')
    assert result.error is not None and result.error.kind is FailureKind.RAISED
    assert result.error.message == "ValueError: the disk is full"
    refused = runner.run("c", "calculator", '{"expression": "__import__(\'os\')"}')
    assert refused.error is not None and refused.error.kind is FailureKind.RAISED
    assert "is not allowed" in refused.error.message


def test_a_call_past_its_timeout_is_killed_and_the_next_call_works(runner: ToolRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    result = runner.run("c", "sleep_past_timeout", json.dumps({"pid_file": str(pid_file)}))
    elapsed = time.monotonic() - started
    assert result.error is not None and result.error.kind is FailureKind.TIMEOUT
    assert "did not finish within 0.5 s" in result.error.message
    assert 0.5 <= elapsed < 0.5 + 2.0, elapsed
    pid = int(pid_file.read_text())
    assert _wait_until(lambda: _gone(pid)), f"worker {pid} still exists"
    after = runner.run("after", "greet", '{"name": "bo"}')
    assert after.ok and json.loads(after.content)["call_id"] == "after"


def test_the_kill_reaches_the_processes_a_tool_started(runner: ToolRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    result = runner.run("c", "spawn_and_sleep", json.dumps({"pid_file": str(pid_file)}))
    assert result.error is not None and result.error.kind is FailureKind.TIMEOUT
    worker, grandchild = (int(p) for p in pid_file.read_text().split())
    assert _wait_until(lambda: _gone(worker) and _gone(grandchild))


def test_a_worker_that_exits_is_a_crash_and_is_replaced(runner: ToolRunner) -> None:
    result = runner.run("c", "exit_now", '{"code": 3}')
    assert result.error is not None and result.error.kind is FailureKind.CRASHED
    assert "exited with code 3 before the tool returned" in result.error.message
    for i in range(4):  # more calls than workers: the pool is whole again
        assert runner.run(f"c{i}", "greet", '{"name": "cy"}').ok


def test_a_result_over_the_limit_is_cut_with_a_visible_marker(runner: ToolRunner) -> None:
    result = runner.run("c", "big", '{"size": 5000}')
    assert result.ok and result.truncated
    assert len(result.content.encode()) <= 1000
    assert result.content.startswith('"éé')
    marker = result.content[result.content.index(TRUNCATION_MARKER):]
    assert marker == f"{TRUNCATION_MARKER} 10002 bytes in all, over the limit of 1000]"
    small = runner.run("c", "big", '{"size": 10}')
    assert not small.truncated and json.loads(small.content) == "é" * 10


@pytest.mark.parametrize(("name", "match"), [("not_json", "returned a set"), ("nan", "Out of range float")])
def test_a_result_that_is_not_json_is_a_failure(runner: ToolRunner, name: str, match: str) -> None:
    result = runner.run("c", name, "")
    assert result.error is not None and result.error.kind is FailureKind.UNSERIALISABLE_RESULT
    assert match in result.error.message


def test_a_closed_runner_answers_unavailable() -> None:
    runner = ToolRunner(ToolRegistry([greet]), settings=ToolsSettings(workers=1))
    with runner:
        assert runner.run("c", "greet", '{"name": "x"}').ok
    result = runner.run("c", "greet", '{"name": "x"}')
    assert result.error is not None and result.error.kind is FailureKind.UNAVAILABLE

