"""``next_action``: what an agent's folded state says should happen next.

A pure decision beside the fold (fold version 4 on): the runtime acts only on what it
returns, so two runtimes folding the same journal want the same step, and the step's
records (ids derived from agent/task/turn/attempt) make the second one a duplicate or a
``turn_taken``. ``requested=True`` on a step means its request is already in the journal
and accepted (the call is open): a runtime that is not performing it already performs it
again with the same call id and prompt (at least once, like Temporal activities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aosk.kernel.params import params_for
from aosk.kernel.state import AgentState, OpenCall, Status
from aosk.kernel.tasks import input_entry_id, llm_call_id, task_entry_ids

__all__ = ["Start", "LlmStep", "ToolRun", "Finish", "Action", "next_action"]

_RUNNING: Final = Status.RUNNING
_READY: Final = Status.READY


@dataclass(frozen=True, slots=True)
class Start:
    """A READY agent holds a task: write ``AgentStarted``."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class LlmStep:
    """Take (or, ``requested``, perform again) a model turn of the running task."""

    agent_id: str
    task_id: str
    turn: int
    attempt: int
    call_id: str
    entry_ids: tuple[str, ...]
    """The prompt: these context entries, in order."""
    requested: bool


@dataclass(frozen=True, slots=True)
class ToolRun:
    """Request (or, ``requested``, run again) a tool call of the task's last reply."""

    agent_id: str
    task_id: str
    call_id: str
    tool: str
    arguments: str
    requested: bool


@dataclass(frozen=True, slots=True)
class Finish:
    """End the running task: ``TaskCompleted`` with ``output`` when ``succeeded``, else
    ``TaskFailed`` with ``reason`` (a code) and ``message``."""

    agent_id: str
    task_id: str
    succeeded: bool
    output: str = ""
    reason: str = ""
    message: str = ""


Action = Start | LlmStep | ToolRun | Finish


def _open(state: AgentState, call_id: str) -> OpenCall | None:
    return state.calls.find(call_id)


def next_action(state: AgentState) -> Action | None:
    """The next step of ``state``'s agent, or None: nothing to do until a new record.

    In order: a READY agent with a task starts; only a RUNNING agent steps (WAITING,
    SUSPENDED and final agents wait for a record that changes that); the running task
    finishes once a reply had no tool calls; its tool calls run one at a time in the
    reply's order; then the next model turn, until ``task_max_turns`` turns or
    ``turn_max_attempts`` timed-out attempts of one turn fail it."""
    tasks = state.tasks
    if not tasks.queue:
        return None
    agent = state.agent_id
    if state.status == _READY:
        return Start(agent)
    if state.status != _RUNNING:
        return None
    task = tasks.running
    if task is None:
        return None
    p = params_for(state.fold_version)
    tid = task.task_id
    if task.output is not None:
        return Finish(agent, tid, True, output=task.output)
    if task.turn == 0 and input_entry_id(tid) not in {e.entry_id for e in state.window.entries}:
        return Finish(agent, tid, False, reason="window_full",
                      message="the task's input does not fit in the context window (pinned entries fill it)")
    for t in task.tools:
        if t.state == "open":
            return ToolRun(agent, tid, t.call_id, t.tool, t.arguments, True)
        if t.state == "pending":
            if t.tool not in state.capabilities:
                return Finish(agent, tid, False, reason="capability_denied",
                              message=f"tool {t.tool!r} was revoked before its call was requested")
            return ToolRun(agent, tid, t.call_id, t.tool, t.arguments, False)
    if task.turn_state == "open":
        call_id = llm_call_id(agent, tid, task.turn, task.attempt)
        call = _open(state, call_id)
        entry_ids = call.entry_ids if call is not None else task_entry_ids(state.window, tid)
        return LlmStep(agent, tid, task.turn, task.attempt, call_id, entry_ids, True)
    if task.turn_state == "timed_out":
        if task.attempt >= p.turn_max_attempts:
            return Finish(agent, tid, False, reason="model_timeout",
                          message=f"turn {task.turn} timed out {task.attempt} times")
        turn, attempt = task.turn, task.attempt + 1
    else:
        if task.turn >= p.task_max_turns:
            return Finish(agent, tid, False, reason="max_turns",
                          message=f"no final answer after {task.turn} model turns (the cap is {p.task_max_turns})")
        turn, attempt = task.turn + 1, 1
    return LlmStep(agent, tid, turn, attempt, llm_call_id(agent, tid, turn, attempt),
                   task_entry_ids(state.window, tid), False)
