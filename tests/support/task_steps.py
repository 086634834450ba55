"""Task steps written the way the agent runtime writes them, for tests without a runtime.

``step_events(state)`` asks ``aosk.kernel.next_action`` what the agent's running task
needs and returns the records a runtime would write for it (``origin="kernel"`` for the
runtime's own events), with a scripted model: turn 1 asks for a ``calc`` tool call, turn 2
answers. A task whose input contains ``fail`` is failed instead of answered.
``LocalJournal`` folds such records in-process (unit tests); integration tests produce
them through the SDK and read the state back from the projection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aosk.events import (
    AgentStarted,
    Budgets,
    Event,
    LlmCallCompleted,
    LlmCallRequested,
    TaskCompleted,
    TaskFailed,
    ToolCallCompleted,
    ToolCallRequested,
)
from aosk.kernel import AgentState, Finish, LlmStep, Record, Start, ToolRun, apply, next_action
from aosk.partitioning import partition_for

BUDGETS = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=4_000)
PROMPT_TOKENS = 40
COMPLETION_TOKENS = 10


def _header(agent_id: str, tenant_id: str, origin: str, event_id: str | None = None) -> dict[str, Any]:
    return dict(event_id=event_id or str(uuid.uuid4()), agent_id=agent_id, tenant_id=tenant_id, occurred_at=0,
                origin=origin)


def _reply(state: AgentState, step: LlmStep) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    task = state.tasks.running
    assert task is not None
    if step.turn == 1 and "calc" in state.capabilities:
        return "", ("calc",), ('{"a":2,"b":3}',)
    return f"answer to {task.input}", (), ()


def step_events(state: AgentState, *, reply: Callable[[AgentState, LlmStep], tuple[str, tuple[str, ...],
                                                                                      tuple[str, ...]]] = _reply
                ) -> list[Event]:
    """The records of the agent's next step (empty: nothing to do until a new record)."""
    action = next_action(state)
    if action is None:
        return []
    a, t = state.agent_id, state.tenant_id or ""
    if isinstance(action, Start):
        return [AgentStarted(**_header(a, t, "client"))]
    if isinstance(action, LlmStep):
        out: list[Event] = []
        if not action.requested:
            out.append(LlmCallRequested(**_header(a, t, "kernel"), call_id=action.call_id, model="stand-in",
                                        prompt_hash="h", prompt_tokens=PROMPT_TOKENS, timeout_ms=600_000,
                                        task_id=action.task_id, turn=action.turn, attempt=action.attempt,
                                        token_estimate=PROMPT_TOKENS, context_entry_ids=action.entry_ids))
        content, names, args = reply(state, action)
        out.append(LlmCallCompleted(**_header(a, t, "kernel"), call_id=action.call_id, response=content,
                                    completion_tokens=COMPLETION_TOKENS, latency_ms=1, content=content,
                                    tool_names=names, tool_arguments=args,
                                    finish_reason="tool_calls" if names else "stop", prompt_tokens=PROMPT_TOKENS))
        return out
    if isinstance(action, ToolRun):
        out = []
        if not action.requested:
            out.append(ToolCallRequested(**_header(a, t, "kernel"), call_id=action.call_id, tool=action.tool,
                                         arguments=action.arguments, timeout_ms=600_000))
        out.append(ToolCallCompleted(**_header(a, t, "kernel"), call_id=action.call_id, result="5", error=None,
                                     duration_ms=1))
        return out
    assert isinstance(action, Finish)
    task = state.tasks.running
    if action.succeeded and task is not None and "fail" not in task.input:
        return [TaskCompleted(**_header(a, t, "kernel"), task_id=action.task_id, output=action.output)]
    reason = action.reason or "gave_up"
    return [TaskFailed(**_header(a, t, "kernel"), task_id=action.task_id, reason=reason,
                       message=action.message or "the model said fail")]


class LocalJournal:
    """Records folded as they are appended (no broker): positions and broker times made up
    the way Kafka would give them, keys on their murmur2 partition."""

    def __init__(self, partitions: int = 3, start_ms: int = 1_800_000_000_000) -> None:
        from aosk.events import KernelUpgraded

        self.partitions = partitions
        self.now = start_ms
        self.offsets = [0] * partitions
        self.records: list[Record] = []
        self.slots: dict[str, Any] = {}
        for p in range(partitions):
            self.append(KernelUpgraded(**_header(f"~p{p}", "", "kernel"), fold_version=4, partitions=partitions),
                        key=None, partition=p)

    def append(self, event: Event, *, key: str | None = "", partition: int | None = None) -> Any:
        from aosk.kernel import fold_args, fold_key, partition_state

        key = event.agent_id if key == "" else key
        p = partition if partition is not None else partition_for(key or "", self.partitions)
        self.now += 7
        r = Record(key, p, self.offsets[p], self.now, uuid.uuid4().bytes, event, None)
        self.offsets[p] += 1
        self.records.append(r)
        ps = partition_state(self.slots, p)
        k = fold_key(r, ps)
        slot, v = apply(self.slots.get(k), r, **fold_args(ps)._asdict())
        self.slots[k] = slot
        return v

    def state(self, agent_id: str) -> AgentState:
        return self.slots[agent_id].state

    def run(self, agent_id: str, *, limit: int = 100) -> None:
        """Write the agent's steps until ``next_action`` has nothing to do."""
        for _ in range(limit):
            events = step_events(self.state(agent_id))
            if not events:
                return
            for e in events:
                v = self.append(e)
                assert v.kind == "accepted", v
        raise AssertionError(f"{agent_id} never ran out of steps")


def run_agent(kernel: Any, reader: Any, agent: str, *, limit: int = 60) -> None:
    """Write the agent's task steps through ``kernel`` (a ``KernelClient``) as the runtime
    would, reading its state back from the projection (``reader``, a ``ProjectionReader``)
    after each step, until ``next_action`` has nothing to do."""
    for _ in range(limit):
        view = reader.agent_state(agent)
        assert view is not None
        events = step_events(view.state)
        if not events:
            return
        pending = [kernel.send(e) for e in events]
        reader.wait_for(pending[-1].result(), timeout=30)
    raise AssertionError(f"{agent} never ran out of steps")
