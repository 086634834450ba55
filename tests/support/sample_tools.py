"""Tools that misbehave on purpose, for tests/unit/test_tools.py. They live in a module of
their own (tests/support is on the workers' sys.path too) so a worker process imports
them without importing pytest and the test module."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from aosk.runtime.tools import ToolContext, tool


@tool
def greet(name: str, context: ToolContext, punctuation: Literal["!", "."] = "!", times: int = 1) -> dict[str, Any]:
    """Greet someone.

    The second paragraph is not part of the description.
    """
    return {"greeting": f"hello {name}{punctuation}" * times, "call_id": context.call_id, "pid": os.getpid()}


@tool(name="sum-numbers", description="Add numbers.", timeout_s=5.0, parameters={
    "type": "object",
    "properties": {"numbers": {"type": "array", "items": {"type": "number"}, "minItems": 1}},
    "required": ["numbers"],
    "additionalProperties": False,
})
def sum_numbers(numbers: list[float]) -> float:
    return sum(numbers)


@tool
def fail(message: str) -> None:
    """Raise a ValueError with the message."""
    raise ValueError(message)


@tool(timeout_s=0.5)
def sleep_past_timeout(pid_file: str) -> str:
    """Write this process's pid to a file, then sleep far past the timeout."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)
    return "woke up"


@tool
def exit_now(code: int) -> None:
    """End the worker process at once, without cleanup."""
    os._exit(code)


@tool(max_result_bytes=1_000)
def big(size: int) -> str:
    """Return a string of ``size`` characters, mostly non-ASCII."""
    return ("é" * size)[:size]


@tool
def not_json() -> object:
    """Return something json.dumps refuses."""
    return {1, 2, 3}


@tool
def nan() -> float:
    """Return NaN, which is not JSON."""
    return float("nan")


@tool(timeout_s=0.5)
def spawn_and_sleep(pid_file: str) -> str:
    """Start a child process that sleeps, write both pids to a file, then sleep past the timeout."""
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(60)
    return "woke up"


@tool(name="greet", description="Another tool that calls itself greet.")
def greet_again(name: str) -> str:
    return name
