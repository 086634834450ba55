"""Tasks, task turns and window quotas (fold version 4 on).

An agent holds a queue of tasks in submission order; the head runs, one at a time. A
task that starts puts its input into the context window (entry ``<task>#in``); each
model reply becomes the entry ``<task>#r<turn>`` and each tool result
``<task>#t<turn>.<index>``, so the prompt of the next turn is built from the window and
a paged-out step becomes a memory like any other entry. Those entries are made by the
fold from the events themselves, with deterministic token counts, so nothing but the
journal decides what a prompt holds.

Turns: a model call of a task names its turn and attempt, and its ids derive from
(agent, task, turn, attempt) (``llm_call_id``): two runtimes racing for one turn write
the same call id, and the second request is ``turn_taken``. The tool calls of a reply get
ids from (model call id, index) (``tool_call_id``), never from the model's own ids.

Quotas per window: fixed windows of broker time (``record.timestamp // window``); a
request is judged against the window of its own timestamp: its ``token_estimate`` up
front (``tokens_per_request``, and the window's tokens), one call against
``calls_per_hour``; the completion's reported tokens are what the window then counts.
Nothing here waits: a refused request is ``rate_limited`` and the runtime asks again
once the window has turned (``quota_refusal`` tells it when).

Everything is pure: ids are uuid5 of their inputs, times are broker timestamps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, NamedTuple

from aosk.events import (
    LlmCallCompleted,
    LlmCallRequested,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallRequested,
)
from aosk.kernel.copying import revise
from aosk.kernel.decision import Decision, FoldContext, Handler, ok, reject
from aosk.kernel.hygiene import check_json, check_metadata, check_name, check_nonneg, check_text, utf8_len
from aosk.kernel.paging import fit, make_entry
from aosk.kernel.params import FoldParams
from aosk.kernel.state import (
    AgentState,
    Calls,
    ContextEntry,
    OpenCall,
    Quota,
    Task,
    Tasks,
    TaskTool,
    Window,
    evolve,
)
from aosk.kernel.verdict import Reason

__all__ = [
    "STEP_NAMESPACE",
    "llm_call_id",
    "tool_call_id",
    "step_event_id",
    "estimate_tokens",
    "input_entry_id",
    "reply_entry_id",
    "result_entry_id",
    "task_entry_ids",
    "quota_window_ms",
    "quota_refusal",
    "QuotaRefusal",
    "HANDLERS",
    "end_all_tasks",
]

STEP_NAMESPACE: Final = uuid.UUID("6f1d0a52-6c1e-5b7e-9a53-7e2a4b0c9d11")
"""The uuid5 namespace of every id a task step derives."""

INPUT_IMPORTANCE: Final = 0.9
"""A task's input entry: the last unpinned band to go (and protected while the task runs)."""
STEP_IMPORTANCE: Final = 0.5
"""Replies and tool results: paged out before older inputs of the same band."""
_TRUNCATED: Final = "\n[truncated: {n} more bytes]"


def llm_call_id(agent_id: str, task_id: str, turn: int, attempt: int) -> str:
    """The call id of a task's model call: the same for every runtime that takes the turn."""
    return str(uuid.uuid5(STEP_NAMESPACE, f"llm\x00{agent_id}\x00{task_id}\x00{turn}\x00{attempt}"))


def tool_call_id(model_call_id: str, index: int) -> str:
    """The call id of the ``index``-th tool call of a model reply."""
    return str(uuid.uuid5(STEP_NAMESPACE, f"tool\x00{model_call_id}\x00{index}"))


def step_event_id(call_or_task_id: str, what: str) -> str:
    """The event id of a step record (``what``: ``requested``, ``completed``, ``finished``...):
    a re-written step is recognisable by its id."""
    return str(uuid.uuid5(STEP_NAMESPACE, f"event\x00{call_or_task_id}\x00{what}"))


def estimate_tokens(text: str) -> int:
    """A deterministic token estimate without a tokenizer: ~4 UTF-8 bytes per token."""
    return (utf8_len(text) + 3) // 4


def input_entry_id(task_id: str) -> str:
    return f"{task_id}#in"


def reply_entry_id(task_id: str, turn: int) -> str:
    return f"{task_id}#r{turn}"


def result_entry_id(task_id: str, turn: int, index: int) -> str:
    return f"{task_id}#t{turn}.{index}"


def task_entry_ids(window: Window, task_id: str) -> tuple[str, ...]:
    """The entries of ``task_id`` still in the window, in append order: a turn's prompt."""
    prefix = task_id + "#"
    return tuple(e.entry_id for e in window.entries if e.entry_id.startswith(prefix))


def quota_window_ms(st: AgentState, p: FoldParams) -> int:
    b = st.budgets
    return (b.quota_window_ms if b is not None and b.quota_window_ms > 0 else 0) or p.default_quota_window_ms


class QuotaRefusal(NamedTuple):
    reason: Reason
    message: str
    retry_at_ms: int | None
    """Broker time at which the window turns (None: waiting does not help)."""


def quota_refusal(st: AgentState, p: FoldParams, timestamp_ms: int, token_estimate: int) -> QuotaRefusal | None:
    """Why a model call at ``timestamp_ms`` (broker time) estimated at ``token_estimate``
    tokens would be refused by the window quotas, or None. The fold judges requests
    with it; a runtime asks it first so it does not write requests bound to be refused."""
    b = st.budgets
    if b is None or not p.runs_tasks:
        return None
    if b.tokens_per_request and token_estimate > b.tokens_per_request:
        return QuotaRefusal(Reason.REQUEST_TOO_LARGE, f"token_estimate {token_estimate} is over tokens_per_request "
                            f"{b.tokens_per_request} of {st.agent_id}", None)
    if b.tokens_per_hour and token_estimate > b.tokens_per_hour:  # waiting for a window would never help
        return QuotaRefusal(Reason.REQUEST_TOO_LARGE, f"token_estimate {token_estimate} is over the whole window's "
                            f"tokens_per_hour {b.tokens_per_hour} of {st.agent_id}: it could never run", None)
    if not (b.calls_per_hour or b.tokens_per_hour):
        return None
    length = quota_window_ms(st, p)
    window = timestamp_ms // length
    calls, tokens = (st.quota.calls, st.quota.tokens) if st.quota.window == window else (0, 0)
    turns_at = (window + 1) * length
    if b.calls_per_hour and calls + 1 > b.calls_per_hour:
        return QuotaRefusal(Reason.RATE_LIMITED, f"{st.agent_id} made {calls} model calls in this quota window "
                            f"(limit {b.calls_per_hour}); the window turns at {turns_at} ms (broker time)", turns_at)
    if b.tokens_per_hour and tokens + token_estimate > b.tokens_per_hour:
        return QuotaRefusal(Reason.RATE_LIMITED, f"{st.agent_id} used {tokens} tokens in this quota window and the "
                            f"call estimates {token_estimate} (limit {b.tokens_per_hour}); the window turns at "
                            f"{turns_at} ms (broker time)", turns_at)
    return None


def _with_window_use(st: AgentState, p: FoldParams, timestamp_ms: int, *, calls: int, tokens: int) -> Quota:
    window = timestamp_ms // quota_window_ms(st, p)
    q = st.quota
    if q.window != window:
        return Quota(window=window, calls=calls, tokens=tokens)
    return Quota(window=window, calls=q.calls + calls, tokens=q.tokens + tokens)


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes with a marker saying how much went (a step's
    entry must land: rejecting it would leave the task stuck)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    marker_room = len(_TRUNCATED.format(n=len(raw))) + 1
    keep = raw[: max(0, limit - marker_room)].decode("utf-8", errors="ignore")
    return keep + _TRUNCATED.format(n=len(raw) - utf8_len(keep))


def _invalid(ev: object, problem: str) -> Decision:
    return reject(Reason.INVALID_PAYLOAD, f"{type(ev).__name__} rejected: {problem}")


def _needs_version(ctx: FoldContext, what: str) -> Decision:
    return reject(Reason.NEEDS_FOLD_VERSION, f"{what} needs fold version 4 (tasks); partition "
                  f"{ctx.record.partition} folds under version {ctx.params.version}: write KernelUpgraded "
                  "to version 4 (aosk kernel upgrade --to-version 4 --yes) first")


def _unknown_task(st: AgentState, task_id: str) -> Decision:
    how = st.tasks.ended_as(task_id)
    if how is not None:
        return reject(Reason.TASK_ENDED, f"task {task_id!r} of {st.agent_id} already ended ({how})")
    return reject(Reason.UNKNOWN_TASK, f"{st.agent_id} holds no task {task_id!r}")


class _Placed(NamedTuple):
    window: Window
    paged: tuple[ContextEntry, ...]


def _place(st: AgentState, window: Window, entry: ContextEntry, p: FoldParams,
           protect: frozenset[str]) -> _Placed | None:
    assert st.budgets is not None
    fitted = fit(window, add=entry, budget_tokens=st.budgets.context_window_tokens, params=p, protect=protect,
                 keep_last=running_task_ids(st, window))
    return None if fitted is None else _Placed(*fitted)


def running_task_ids(st: AgentState, window: Window | None = None) -> frozenset[str]:
    """The running task's entries: paged out only after every other unpinned entry, so a
    task keeps its own steps in its prompt as long as the window can hold them."""
    running = st.tasks.running
    if running is None:
        return frozenset()
    return frozenset(task_entry_ids(st.window if window is None else window, running.task_id))


class _Started(NamedTuple):
    tasks: Tasks
    window: Window
    paged: tuple[ContextEntry, ...]


def _start_head(st: AgentState, tasks: Tasks, window: Window, ctx: FoldContext,
                paged: tuple[ContextEntry, ...] = ()) -> _Started:
    """Start the head of ``tasks`` if it has not started: its input becomes a context
    entry. An input that cannot fit (the window is full of pinned or protected entries)
    starts the task anyway with ``output`` unset and no entry: its first turn then has
    no input and the runtime fails it (``next_action``: ``window_full``)."""
    if not tasks.queue or tasks.queue[0].started:
        return _Started(tasks, window, paged)
    head = tasks.queue[0]
    entry = make_entry(entry_id=input_entry_id(head.task_id), role="user", content=head.input,
                       tokens=estimate_tokens(head.input), importance=INPUT_IMPORTANCE, seq=ctx.seq,
                       params=ctx.params)
    placed = _place(st, window, entry, ctx.params, _open_prompt_ids(st.calls))
    if placed is not None:
        window, paged = placed.window, paged + placed.paged
    started = replace(head, started=True)
    return _Started(Tasks(queue=(started, *tasks.queue[1:]), ended=tasks.ended), window, paged)


def _open_prompt_ids(calls: Calls) -> frozenset[str]:
    ids: set[str] = set()
    for c in calls.open:
        ids.update(c.entry_ids)
    return frozenset(ids)


def protected_ids(st: AgentState) -> frozenset[str]:
    """Entries paging must keep: every open model call's prompt and the running task's input."""
    ids = set(_open_prompt_ids(st.calls))
    running = st.tasks.running
    if running is not None:
        ids.add(input_entry_id(running.task_id))
    return frozenset(ids)


def _end_task(st: AgentState, ctx: FoldContext, task_id: str, how: str, abandon: str) -> dict[str, Any]:
    """Changes that end ``task_id`` (``how``): it leaves the queue, its open calls are
    closed as ``abandon`` (a later completion is rejected with that reason), and the next
    task starts."""
    p = ctx.params
    queue = tuple(t for t in st.tasks.queue if t.task_id != task_id)
    ended = (*st.tasks.ended, (task_id, how))[-p.ended_tasks_memory:]
    changes: dict[str, Any] = {}
    gone = tuple(c for c in st.calls.open if c.task_id == task_id)
    calls = st.calls
    if gone:
        abandoned = (*calls.abandoned, *((c.call_id, abandon) for c in gone))[-p.abandoned_calls_memory:]
        calls = Calls(open=tuple(c for c in calls.open if c.task_id != task_id), timed_out=calls.timed_out,
                      abandoned=abandoned)
        changes["calls"] = calls
    after = evolve(st, {"calls": calls}) if gone else st
    started = _start_head(after, Tasks(queue=queue, ended=ended), st.window, ctx)
    changes["tasks"] = started.tasks
    changes.update(_window_changes(st, started.window, started.paged))
    return changes


def _window_changes(st: AgentState, window: Window, paged: tuple[ContextEntry, ...]) -> dict[str, Any]:
    """The state changes of a window that entries were placed in: the window when it
    changed, and the entries paged out (counted as memories, handed on as ``_paged``)."""
    changes: dict[str, Any] = {}
    if window is not st.window:
        changes["window"] = window
    if paged:
        changes["counters"] = revise(st.counters, memories_stored=st.counters.memories_stored + len(paged))
        changes["_paged"] = paged
    return changes


def end_all_tasks(st: AgentState, how: str, abandon: str, keep: FoldParams, *, calls_after: Calls) -> dict[str, Any]:
    """Changes that end every task of ``st``'s agent as it reaches a final status (killed,
    terminated, failed): all are ``how``, and the calls they had open in ``st`` are
    remembered as ``abandon``-ed in ``calls_after`` (the call table the event leaves)."""
    if not st.tasks.queue:
        return {}
    ids = {t.task_id for t in st.tasks.queue}
    ended = (*st.tasks.ended, *((t.task_id, how) for t in st.tasks.queue))[-keep.ended_tasks_memory:]
    changes: dict[str, Any] = {"tasks": Tasks(queue=(), ended=ended)}
    gone = tuple(c for c in st.calls.open if c.task_id in ids)
    if gone:
        abandoned = (*calls_after.abandoned, *((c.call_id, abandon) for c in gone))[-keep.abandoned_calls_memory:]
        changes["calls"] = Calls(open=tuple(c for c in calls_after.open if c.task_id not in ids),
                                 timed_out=calls_after.timed_out, abandoned=abandoned)
    return changes


def _decided(message: str, changes: Mapping[str, Any], consume: tuple[int, int, int] | None = None) -> Decision:
    ch = dict(changes)
    paged = ch.pop("_paged", ())
    return ok(message, paged_out=paged, consume=consume, **ch)


# --- task events --------------------------------------------------------------------------


def _task_id_problem(task_id: str, p: FoldParams) -> str | None:
    problem = check_name("task_id", task_id, p)
    if problem is None and utf8_len(task_id) > p.task_id_max_bytes:
        problem = f"task_id is longer than {p.task_id_max_bytes} bytes"
    if problem is None and "#" in task_id:
        problem = "task_id must not contain '#' (its context entries are named <task_id>#...)"
    return problem


def _task_submitted(ctx: FoldContext, st: AgentState, ev: TaskSubmitted) -> Decision:
    p = ctx.params
    if not p.runs_tasks:
        return _needs_version(ctx, "TaskSubmitted")
    problem = (_task_id_problem(ev.task_id, p) or check_text("input", ev.input, p.entry_max_bytes)
               or check_metadata("metadata", ev.metadata, p))
    if problem:
        return _invalid(ev, problem)
    if not ev.input:
        return _invalid(ev, "input must not be empty")
    tasks = st.tasks
    if tasks.find(ev.task_id) is not None or tasks.ended_as(ev.task_id) is not None:
        return reject(Reason.TASK_ID_IN_USE, f"{st.agent_id} already has a task {ev.task_id!r}; use a new task id")
    if len(tasks.queue) >= p.max_queued_tasks:
        return reject(Reason.TASK_QUEUE_FULL, f"{st.agent_id} holds {len(tasks.queue)} tasks (the cap is "
                      f"{p.max_queued_tasks}); submit again when one has ended")
    task = Task(task_id=ev.task_id, input=ev.input, submitted_seq=ctx.seq)
    queued = sum(len(t.json_bytes()) for t in tasks.queue) + len(task.json_bytes())
    if queued > p.task_queue_max_bytes:
        return reject(Reason.TASK_QUEUE_FULL, f"the queued tasks of {st.agent_id} would take {queued} bytes (the cap "
                      f"is {p.task_queue_max_bytes}); submit again when one has ended, or send a shorter input")
    started = _start_head(st, Tasks(queue=(*tasks.queue, task), ended=tasks.ended), st.window, ctx)
    changes: dict[str, Any] = {"tasks": started.tasks, **_window_changes(st, started.window, started.paged)}
    where = "runs now" if started.tasks.queue[0].task_id == ev.task_id else f"is number {len(tasks.queue) + 1} in line"
    return _decided(f"task {ev.task_id} accepted; it {where} on {st.agent_id}", changes)


def _task_completed(ctx: FoldContext, st: AgentState, ev: TaskCompleted) -> Decision:
    if not ctx.params.runs_tasks:
        return _needs_version(ctx, "TaskCompleted")
    task = st.tasks.find(ev.task_id)
    if task is None:
        return _unknown_task(st, ev.task_id)
    if not task.started or task.output is None:
        return reject(Reason.OUT_OF_ORDER, f"task {ev.task_id!r} of {st.agent_id} has no final answer yet "
                      "(a model reply without tool calls comes first)")
    if ev.output != task.output:
        return _invalid(ev, "output is not the task's final answer (the last model reply)")
    changes = _end_task(st, ctx, ev.task_id, "succeeded", "task_ended")
    return _decided(f"task {ev.task_id} succeeded on {st.agent_id}", changes)


def _task_failed(ctx: FoldContext, st: AgentState, ev: TaskFailed) -> Decision:
    p = ctx.params
    if not p.runs_tasks:
        return _needs_version(ctx, "TaskFailed")
    problem = check_name("reason", ev.reason, p) or check_text("message", ev.message, p.max_text_bytes)
    if problem:
        return _invalid(ev, problem)
    if st.tasks.find(ev.task_id) is None:
        return _unknown_task(st, ev.task_id)
    changes = _end_task(st, ctx, ev.task_id, "failed", "task_ended")
    return _decided(f"task {ev.task_id} failed on {st.agent_id} ({ev.reason})", changes)


def _task_cancelled(ctx: FoldContext, st: AgentState, ev: TaskCancelled) -> Decision:
    p = ctx.params
    if not p.runs_tasks:
        return _needs_version(ctx, "TaskCancelled")
    problem = check_text("reason", ev.reason, p.note_max_chars * 4)
    if problem:
        return _invalid(ev, problem)
    if st.tasks.find(ev.task_id) is None:
        return _unknown_task(st, ev.task_id)
    changes = _end_task(st, ctx, ev.task_id, "cancelled", "task_cancelled")
    return _decided(f"task {ev.task_id} cancelled on {st.agent_id}", changes)


HANDLERS: Final[dict[str, Handler]] = {
    "TaskSubmitted": _task_submitted,
    "TaskCompleted": _task_completed,
    "TaskFailed": _task_failed,
    "TaskCancelled": _task_cancelled,
}


# --- task-bound calls (called by aosk.kernel.work) ----------------------------------------------


def llm_requested_for_task(ctx: FoldContext, st: AgentState, ev: LlmCallRequested, calls: Calls) -> Decision:
    """A model call that takes a task's turn. ``calls`` is the call table with the call
    already opened (plain checks passed); this judges the turn, prompt and quotas."""
    p = ctx.params
    assert ev.task_id is not None
    if not p.runs_tasks:
        return _needs_version(ctx, "a model call with task_id")
    task = st.tasks.running
    if task is None or task.task_id != ev.task_id:
        queued = st.tasks.find(ev.task_id)
        if queued is not None:
            return reject(Reason.OUT_OF_ORDER, f"task {ev.task_id!r} of {st.agent_id} has not started (another "
                          "task runs first)")
        return _unknown_task(st, ev.task_id)
    if ev.call_id != llm_call_id(st.agent_id, ev.task_id, ev.turn, ev.attempt):
        return _invalid(ev, "call_id is not llm_call_id(agent_id, task_id, turn, attempt)")
    if task.turn_state == "timed_out":
        expected = (task.turn, task.attempt + 1)
    else:
        expected = (task.turn + 1, 1)
    if (ev.turn, ev.attempt) != expected:
        if (ev.turn, ev.attempt) < expected:
            return reject(Reason.TURN_TAKEN, f"turn {ev.turn} attempt {ev.attempt} of task {ev.task_id!r} was "
                          f"already taken on {st.agent_id} (next: turn {expected[0]} attempt {expected[1]})")
        return reject(Reason.OUT_OF_ORDER, f"task {ev.task_id!r} of {st.agent_id} is at turn {task.turn} "
                      f"({task.turn_state or 'not begun'}); the next request is turn {expected[0]} attempt "
                      f"{expected[1]}")
    if task.turn_state == "open":
        return reject(Reason.TURN_TAKEN, f"turn {task.turn} of task {ev.task_id!r} is still open on {st.agent_id}")
    if task.output is not None:
        return reject(Reason.OUT_OF_ORDER, f"task {ev.task_id!r} has its final answer; it finishes, no more turns")
    pending = [t.call_id for t in task.tools if t.state in ("pending", "open")]
    if pending:
        return reject(Reason.OUT_OF_ORDER, f"task {ev.task_id!r} of {st.agent_id} still has {len(pending)} tool "
                      "call(s) of its last reply to run")
    present = {e.entry_id for e in st.window.entries}
    if len(ev.context_entry_ids) > p.window_max_entries:
        return _invalid(ev, f"context_entry_ids has more than {p.window_max_entries} ids")
    if sum(utf8_len(e) for e in ev.context_entry_ids) > p.prompt_ids_max_bytes:
        return _invalid(ev, f"context_entry_ids are longer than {p.prompt_ids_max_bytes} bytes together")
    for e in ev.context_entry_ids:
        if e not in present:
            return _invalid(ev, f"context entry {e!r} is not in the context window of {st.agent_id}")
    problem = check_nonneg("token_estimate", ev.token_estimate)
    if problem:
        return _invalid(ev, problem)
    refusal = quota_refusal(st, p, ctx.record.timestamp, ev.token_estimate)
    if refusal is not None:
        return reject(refusal.reason, refusal.message)
    opened = calls.open[-1]
    opened = OpenCall(call_id=opened.call_id, kind=opened.kind, deadline_ms=opened.deadline_ms,
                      request_event_id=opened.request_event_id, task_id=ev.task_id,
                      entry_ids=tuple(ev.context_entry_ids))
    calls = Calls(open=(*calls.open[:-1], opened), timed_out=calls.timed_out, abandoned=calls.abandoned)
    task = replace(task, turn=ev.turn, attempt=ev.attempt, turn_state="open", tools=(),
                  model_calls=task.model_calls + 1)
    return ok(consume=(0, 0, 1), calls=calls, tasks=replace(st.tasks, queue=(task, *st.tasks.queue[1:])),
              quota=_with_window_use(st, p, ctx.record.timestamp, calls=1, tokens=0))


def llm_window_use(ctx: FoldContext, st: AgentState, *, calls: int, tokens: int) -> dict[str, Any]:
    """Window use of a model call outside any task (fold version 4 counts those too)."""
    b = st.budgets
    if not ctx.params.runs_tasks or b is None or not (b.calls_per_hour or b.tokens_per_hour):
        return {}
    return {"quota": _with_window_use(st, ctx.params, ctx.record.timestamp, calls=calls, tokens=tokens)}


def _reply_text(ev: LlmCallCompleted, ids: list[str]) -> str:
    """A reply's entry: its text alone, or, when it calls tools, JSON with the calls (the
    ids the tool results answer), so a prompt can be rebuilt with the protocol's shape."""
    if not ev.tool_names:
        return ev.content
    calls = [{"id": i, "name": n, "arguments": a} for i, n, a in zip(ids, ev.tool_names, ev.tool_arguments,
                                                                       strict=True)]
    return json.dumps({"content": ev.content, "tool_calls": calls}, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True)


def llm_completed_for_task(ctx: FoldContext, st: AgentState, ev: LlmCallCompleted, call: OpenCall,
                           calls: Calls) -> Decision:
    p = ctx.params
    task = st.tasks.running
    if task is None or task.task_id != call.task_id:  # its task ended: the call was abandoned then
        return reject(Reason.TASK_ENDED, f"task {call.task_id!r} of {st.agent_id} is not running")
    problem = check_nonneg("prompt_tokens", ev.prompt_tokens)
    if problem is None and len(ev.tool_names) != len(ev.tool_arguments):
        problem = "tool_names and tool_arguments differ in length"
    if problem is None and len(ev.tool_names) > p.max_tools_per_reply:
        problem = f"the reply asks for more than {p.max_tools_per_reply} tool calls"
    if problem is None and sum(utf8_len(a) for a in ev.tool_arguments) > p.tool_arguments_max_bytes:
        problem = f"the reply's tool arguments are longer than {p.tool_arguments_max_bytes} bytes together"
    for name, args in zip(ev.tool_names, ev.tool_arguments, strict=False):
        problem = problem or check_name("tool_names element", name, p) or check_json("tool_arguments element", args, p)
    if problem is None:
        problem = check_text("content", ev.content, p.entry_max_bytes)
    if problem:
        return _invalid(ev, problem)
    ids = [tool_call_id(ev.call_id, i) for i in range(len(ev.tool_names))]
    used = ev.prompt_tokens + ev.completion_tokens
    window = st.window
    paged: tuple[ContextEntry, ...] = ()
    protect = protected_ids(st)
    reply = make_entry(entry_id=reply_entry_id(task.task_id, task.turn), role="assistant",
                       content=clip_text(_reply_text(ev, ids), p.entry_max_bytes),
                       tokens=ev.completion_tokens or estimate_tokens(ev.content), importance=STEP_IMPORTANCE,
                       seq=ctx.seq, params=p)
    placed = _place(st, window, reply, p, protect)
    if placed is not None:
        window, paged = placed.window, placed.paged
    tools = []
    for i, (name, args) in enumerate(zip(ev.tool_names, ev.tool_arguments, strict=True)):
        if name in st.capabilities:
            tools.append(TaskTool(call_id=ids[i], tool=name, arguments=args, state="pending"))
            continue
        tools.append(TaskTool(call_id=ids[i], tool=name, arguments=args, state="denied"))
        denial = (f"error: capability_denied: tool {name!r} is not in the capabilities of {st.agent_id} "
                  f"({', '.join(st.capabilities.names) or 'none'})")
        placed = _place(st, window, make_entry(entry_id=result_entry_id(task.task_id, task.turn, i), role="tool",
                                               content=denial, tokens=estimate_tokens(denial),
                                               importance=STEP_IMPORTANCE, seq=ctx.seq, params=p), p, protect)
        if placed is not None:
            window, paged = placed.window, paged + placed.paged
    task = replace(task, turn_state="done", tools=tuple(tools), tokens=task.tokens + used,
                  output=None if ev.tool_names else ev.content)
    changes: dict[str, Any] = {"calls": calls, "tasks": replace(st.tasks, queue=(task, *st.tasks.queue[1:])),
                               "window": window}
    changes.update(llm_window_use(ctx, st, calls=0, tokens=used))
    if paged:
        changes["counters"] = revise(st.counters, memories_stored=st.counters.memories_stored + len(paged))
    return ok(paged_out=paged, consume=(used, 0, 0), **changes)


def _task_tool(st: AgentState, call_id: str) -> tuple[Task, int] | None:
    task = st.tasks.running
    if task is None:
        return None
    for i, t in enumerate(task.tools):
        if t.call_id == call_id:
            return task, i
    return None


def is_task_tool_call(st: AgentState, call_id: str) -> bool:
    return _task_tool(st, call_id) is not None


def tool_requested_for_task(ctx: FoldContext, st: AgentState, ev: ToolCallRequested, calls: Calls) -> Decision:
    found = _task_tool(st, ev.call_id)
    assert found is not None
    task, i = found
    spec = task.tools[i]
    if spec.state != "pending":
        return reject(Reason.OUT_OF_ORDER, f"tool call {ev.call_id!r} of task {task.task_id!r} is {spec.state}")
    if ev.tool != spec.tool or ev.arguments != spec.arguments:
        return reject(Reason.OUT_OF_ORDER, f"tool call {ev.call_id!r} must be {spec.tool} with the arguments the "
                      "model reply gave")
    opened = calls.open[-1]
    opened = OpenCall(call_id=opened.call_id, kind=opened.kind, deadline_ms=opened.deadline_ms,
                      request_event_id=opened.request_event_id, task_id=task.task_id)
    calls = Calls(open=(*calls.open[:-1], opened), timed_out=calls.timed_out, abandoned=calls.abandoned)
    tools = (*task.tools[:i], replace(spec, state="open"), *task.tools[i + 1:])
    task = replace(task, tools=tools, tool_calls=task.tool_calls + 1)
    return ok(consume=(0, 1, 1), calls=calls, tasks=replace(st.tasks, queue=(task, *st.tasks.queue[1:])))


def tool_result_changes(ctx: FoldContext, st: AgentState, call: OpenCall, text: str) -> dict[str, Any]:
    """Changes that record a task tool call's result (a completion or a timeout): the
    call is done and its result (``text``) a context entry."""
    p = ctx.params
    task = st.tasks.running
    changes: dict[str, Any] = {}
    if task is None or task.task_id != call.task_id:
        return changes
    found = _task_tool(st, call.call_id)
    if found is None:
        return changes
    _, i = found
    tools = (*task.tools[:i], replace(task.tools[i], state="done"), *task.tools[i + 1:])
    entry = make_entry(entry_id=result_entry_id(task.task_id, task.turn, i), role="tool",
                       content=clip_text(text, p.entry_max_bytes), tokens=estimate_tokens(text),
                       importance=STEP_IMPORTANCE, seq=ctx.seq, params=p)
    placed = _place(st, st.window, entry, p, protected_ids(st))
    changes["tasks"] = replace(st.tasks, queue=(replace(task, tools=tools), *st.tasks.queue[1:]))
    if placed is not None:
        changes.update(_window_changes(st, placed.window, placed.paged))
    return changes


def tool_completed_text(ev: ToolCallCompleted) -> str:
    return ev.result if ev.error is None else f"error: {ev.error}\n{ev.result}".rstrip("\n")


def llm_timed_out_changes(st: AgentState, call: OpenCall) -> dict[str, Any]:
    """A task model call timed out: the turn may be asked again (next attempt)."""
    task = st.tasks.running
    if task is None or task.task_id != call.task_id:
        return {}
    return {"tasks": replace(st.tasks, queue=(replace(task, turn_state="timed_out"), *st.tasks.queue[1:]))}
