"""Handlers of work events (RUNNING only), completions, memory and IPC events.

Budget accounting is done by the fold from each handler's ``consume``: every accepted
work event is one step; ``ToolCallRequested`` is one tool call; ``LlmCallRequested``
counts its ``prompt_tokens`` and ``LlmCallCompleted`` its ``completion_tokens``.
"""

from __future__ import annotations

from typing import Any, Final

from aosk.events import (
    CallTimedOut,
    ContextAppended,
    LlmCallCompleted,
    LlmCallRequested,
    MemoryEmbedded,
    MemoryForgotten,
    MemoryRecalled,
    MemoryStored,
    MessageBounced,
    MessageDelivered,
    MessagesConsumed,
    MessageSent,
    SpawnRequested,
    ToolCallCompleted,
    ToolCallRequested,
)
from aosk.kernel.copying import revise
from aosk.kernel.decision import Decision, FoldContext, Handler, dup, ok, reject
from aosk.kernel.hygiene import (
    check_agent_id,
    check_budgets,
    check_embedding,
    check_importance,
    check_json,
    check_metadata,
    check_name,
    check_nonneg,
    check_text,
)
from aosk.kernel.lifecycle import caps_problem
from aosk.kernel.paging import fit, make_entry
from aosk.kernel.state import AgentState, Calls, Inbox, InboxMessage, OpenCall
from aosk.kernel.tasks import (
    is_task_tool_call,
    llm_completed_for_task,
    llm_requested_for_task,
    llm_timed_out_changes,
    llm_window_use,
    protected_ids,
    quota_refusal,
    running_task_ids,
    tool_completed_text,
    tool_requested_for_task,
    tool_result_changes,
)
from aosk.kernel.verdict import Reason

__all__ = ["HANDLERS"]

_STEP: Final = (0, 0, 1)


def _invalid(ev: object, problem: str) -> Decision:
    return reject(Reason.INVALID_PAYLOAD, f"{type(ev).__name__} rejected: {problem}")


# --- context and memory -------------------------------------------------------------------


def _context_appended(ctx: FoldContext, st: AgentState, ev: ContextAppended) -> Decision:
    p = ctx.params
    problem = (
        check_name("entry_id", ev.entry_id, p)
        or check_name("role", ev.role, p)
        or check_text("content", ev.content, p.entry_max_bytes)
        or check_nonneg("tokens", ev.tokens)
        or check_importance("importance", ev.importance)
    )
    if problem:
        return _invalid(ev, problem)
    for e in st.window.entries:
        if e.entry_id == ev.entry_id:
            return _invalid(ev, f"entry_id {ev.entry_id!r} is already in the context window")
    entry = make_entry(entry_id=ev.entry_id, role=ev.role, content=ev.content, tokens=ev.tokens,
                       importance=ev.importance, seq=ctx.seq, params=p)
    assert st.budgets is not None
    protect = protected_ids(st) if p.runs_tasks else frozenset()
    keep = running_task_ids(st) if p.runs_tasks else frozenset()
    fitted = fit(st.window, add=entry, budget_tokens=st.budgets.context_window_tokens, params=p, protect=protect,
                 keep_last=keep)
    if fitted is None:
        return reject(
            Reason.WINDOW_FULL,
            f"entry {ev.entry_id!r} ({ev.tokens} tokens) does not fit in the context window of "
            f"{st.agent_id} ({st.budgets.context_window_tokens} tokens, {p.window_max_entries} entries, "
            f"{p.window_max_bytes} bytes) even after paging out every unpinned entry; raise "
            "context_window_tokens with BudgetUpdated or lower some importances below "
            f"{p.pin_importance}",
        )
    window, paged = fitted
    if paged:
        counters = revise(st.counters, memories_stored=st.counters.memories_stored + len(paged))
        return ok(paged_out=paged, consume=_STEP, window=window, counters=counters)
    return ok(consume=_STEP, window=window)


def _memory_stored(ctx: FoldContext, st: AgentState, ev: MemoryStored) -> Decision:
    p = ctx.params
    problem = (
        check_name("memory_id", ev.memory_id, p)
        or check_text("text", ev.text, p.max_text_bytes)
        or (check_embedding("embedding", ev.embedding, p) if ev.embedding is not None else None)
        or check_importance("importance", ev.importance)
        or check_metadata("metadata", ev.metadata, p)
    )
    if problem:
        return _invalid(ev, problem)
    return ok(consume=_STEP, counters=revise(st.counters, memories_stored=st.counters.memories_stored + 1))


def _memory_embedded(ctx: FoldContext, st: AgentState, ev: MemoryEmbedded) -> Decision:
    p = ctx.params
    problem = check_name("memory_id", ev.memory_id, p) or check_embedding("embedding", ev.embedding, p)
    return _invalid(ev, problem) if problem else ok()


def _memory_recalled(ctx: FoldContext, st: AgentState, ev: MemoryRecalled) -> Decision:
    p = ctx.params
    problem = check_name("query_hash", ev.query_hash, p)
    if not problem and len(ev.memory_ids) > p.max_ids_per_event:
        problem = f"memory_ids has more than {p.max_ids_per_event} ids"
    for m in ev.memory_ids:
        problem = problem or check_name("memory_ids element", m, p)
    return _invalid(ev, problem) if problem else ok(consume=_STEP)


def _memory_forgotten(ctx: FoldContext, st: AgentState, ev: MemoryForgotten) -> Decision:
    problem = check_name("memory_id", ev.memory_id, ctx.params)
    if problem:
        return _invalid(ev, problem)
    return ok(counters=revise(st.counters, memories_forgotten=st.counters.memories_forgotten + 1))


# --- calls ----------------------------------------------------------------------------------


def _open_call(
    ctx: FoldContext, st: AgentState, ev: LlmCallRequested | ToolCallRequested, kind: str,
) -> Calls | Decision:
    p = ctx.params
    if not 1 <= ev.timeout_ms <= p.max_timeout_ms:
        return _invalid(ev, f"timeout_ms {ev.timeout_ms} is not in 1..{p.max_timeout_ms}")
    if st.calls.find(ev.call_id) is not None:
        return reject(Reason.CALL_ID_IN_USE, f"call {ev.call_id!r} is already open on {st.agent_id}; "
                      "use a new call_id")
    if len(st.calls.open) >= p.max_open_calls:
        return reject(Reason.TOO_MANY_OPEN_CALLS, f"{st.agent_id} has {p.max_open_calls} calls open (the cap); "
                      "wait for a completion or a timeout")
    call = OpenCall(call_id=ev.call_id, kind=kind, deadline_ms=ctx.record.timestamp + ev.timeout_ms,
                    request_event_id=ev.event_id)
    return Calls(open=(*st.calls.open, call), timed_out=st.calls.timed_out, abandoned=st.calls.abandoned)


def _llm_requested(ctx: FoldContext, st: AgentState, ev: LlmCallRequested) -> Decision:
    p = ctx.params
    problem = (
        check_name("call_id", ev.call_id, p)
        or check_name("model", ev.model, p)
        or check_name("prompt_hash", ev.prompt_hash, p)
        or check_nonneg("prompt_tokens", ev.prompt_tokens)
    )
    if problem:
        return _invalid(ev, problem)
    if ev.task_id is not None and st.calls.find(ev.call_id) is not None:
        return reject(Reason.TURN_TAKEN, f"turn {ev.turn} attempt {ev.attempt} of task {ev.task_id!r} is already "
                      f"open on {st.agent_id} (call {ev.call_id})")
    calls = _open_call(ctx, st, ev, "llm")
    if isinstance(calls, Decision):
        return calls
    if ev.task_id is not None:
        return llm_requested_for_task(ctx, st, ev, calls)
    if p.runs_tasks:  # a call outside any task still counts against the window quotas
        refusal = quota_refusal(st, p, ctx.record.timestamp, ev.token_estimate or ev.prompt_tokens)
        if refusal is not None:
            return reject(refusal.reason, refusal.message)
        return ok(consume=(ev.prompt_tokens, 0, 1), calls=calls,
                  **llm_window_use(ctx, st, calls=1, tokens=ev.prompt_tokens))
    return ok(consume=(ev.prompt_tokens, 0, 1), calls=calls)


def _tool_requested(ctx: FoldContext, st: AgentState, ev: ToolCallRequested) -> Decision:
    p = ctx.params
    problem = check_name("call_id", ev.call_id, p) or check_name("tool", ev.tool, p)
    if problem:
        return _invalid(ev, problem)
    if ev.tool not in st.capabilities:
        return reject(Reason.CAPABILITY_DENIED, f"tool {ev.tool!r} is not in the capabilities of {st.agent_id} "
                      f"({', '.join(st.capabilities.names) or 'none'}); grant it with CapabilityGranted")
    problem = check_json("arguments", ev.arguments, p)
    if problem:
        return _invalid(ev, problem)
    calls = _open_call(ctx, st, ev, "tool")
    if isinstance(calls, Decision):
        return calls
    if p.runs_tasks and is_task_tool_call(st, ev.call_id):
        return tool_requested_for_task(ctx, st, ev, calls)
    return ok(consume=(0, 1, 1), calls=calls)


def _close_call(
    st: AgentState, ev: LlmCallCompleted | ToolCallCompleted, kind: str,
) -> tuple[OpenCall, Calls] | Decision:
    call = st.calls.find(ev.call_id)
    if call is None:
        if ev.call_id in st.calls.timed_out:
            return reject(Reason.LATE_COMPLETION, f"call {ev.call_id!r} of {st.agent_id} timed out "
                          "(CallTimedOut comes first in the journal); this completion is late and ignored")
        why = st.calls.abandoned_reason(ev.call_id)
        if why is not None:
            return reject(Reason.TASK_ENDED, f"call {ev.call_id!r} of {st.agent_id} was closed when its task "
                          f"ended ({why}); this completion comes after that in the journal and is ignored")
        return reject(Reason.UNKNOWN_CALL, f"call {ev.call_id!r} is not open on {st.agent_id}")
    if call.kind != kind:
        return _invalid(ev, f"call {ev.call_id!r} is a {call.kind} call")
    return call, Calls(open=tuple(c for c in st.calls.open if c is not call), timed_out=st.calls.timed_out,
                       abandoned=st.calls.abandoned)


def _llm_completed(ctx: FoldContext, st: AgentState, ev: LlmCallCompleted) -> Decision:
    problem = check_nonneg("completion_tokens", ev.completion_tokens) or check_nonneg("latency_ms", ev.latency_ms)
    if problem:
        return _invalid(ev, problem)
    closed = _close_call(st, ev, "llm")
    if isinstance(closed, Decision):
        return closed
    call, calls = closed
    if call.task_id is not None:
        return llm_completed_for_task(ctx, st, ev, call, calls)
    return ok(consume=(ev.completion_tokens, 0, 0), calls=calls,
              **llm_window_use(ctx, st, calls=0, tokens=ev.completion_tokens))


def _tool_completed(ctx: FoldContext, st: AgentState, ev: ToolCallCompleted) -> Decision:
    problem = check_nonneg("duration_ms", ev.duration_ms)
    if problem:
        return _invalid(ev, problem)
    closed = _close_call(st, ev, "tool")
    if isinstance(closed, Decision):
        return closed
    call, calls = closed
    if call.task_id is not None:
        return _with_task_changes(calls, tool_result_changes(ctx, st, call, tool_completed_text(ev)))
    return ok(calls=calls)


def _with_task_changes(calls: Calls, changes: dict[str, Any]) -> Decision:
    paged = changes.pop("_paged", ())
    assert isinstance(paged, tuple)
    return ok(paged_out=paged, calls=calls, **changes)


def _call_timed_out(ctx: FoldContext, st: AgentState, ev: CallTimedOut) -> Decision:
    call = st.calls.find(ev.call_id)
    if call is None:
        return dup(Reason.CALL_NOT_OPEN, f"call {ev.call_id!r} is no longer open on {st.agent_id}; nothing to time out")
    keep = ctx.params.timed_out_memory
    timed_out = (*st.calls.timed_out, ev.call_id)[-keep:]
    calls = Calls(open=tuple(c for c in st.calls.open if c is not call), timed_out=timed_out,
                  abandoned=st.calls.abandoned)
    if call.task_id is None:
        return ok(calls=calls)
    if call.kind == "llm":
        return _with_task_changes(calls, llm_timed_out_changes(st, call))
    return _with_task_changes(calls, tool_result_changes(ctx, st, call, "error: timeout: the tool call timed out"))


# --- IPC and children ---------------------------------------------------------------------


def _message_sent(ctx: FoldContext, st: AgentState, ev: MessageSent) -> Decision:
    p = ctx.params
    problem = (
        check_name("message_id", ev.message_id, p)
        or check_agent_id("to_agent_id", ev.to_agent_id, p)
        or check_text("body", ev.body, p.message_max_bytes)
    )
    if problem:
        return _invalid(ev, problem)
    return ok(consume=_STEP,
              counters=revise(st.counters, messages_sent=st.counters.messages_sent + 1))


def _message_delivered(ctx: FoldContext, st: AgentState, ev: MessageDelivered) -> Decision:
    p = ctx.params
    problem = (
        check_name("message_id", ev.message_id, p)
        or check_agent_id("from_agent_id", ev.from_agent_id, p)
        or check_name("from_tenant_id", ev.from_tenant_id, p)
        or check_text("body", ev.body, p.message_max_bytes)
    )
    if problem:
        return reject(Reason.UNDELIVERABLE, f"MessageDelivered rejected: {problem}; the message bounces")
    msg = InboxMessage(message_id=ev.message_id, from_agent_id=ev.from_agent_id, from_tenant_id=ev.from_tenant_id,
                       body=ev.body, source_partition=ev.source_partition, source_offset=ev.source_offset,
                       seq=ctx.seq)
    size = len(msg.json_bytes())
    inbox = st.inbox
    if len(inbox.messages) >= p.inbox_cap or inbox.nbytes + size > p.inbox_max_bytes:
        return reject(Reason.INBOX_FULL, f"inbox of {st.agent_id} is full ({len(inbox.messages)} messages, "
                      f"{inbox.nbytes} bytes; caps {p.inbox_cap} and {p.inbox_max_bytes}); the message bounces "
                      "to its sender. The recipient frees room with MessagesConsumed")
    return ok(inbox=Inbox(messages=(*inbox.messages, msg), nbytes=inbox.nbytes + size),
              counters=revise(st.counters, messages_received=st.counters.messages_received + 1))


def _message_bounced(ctx: FoldContext, st: AgentState, ev: MessageBounced) -> Decision:
    return ok(f"message {ev.message_id!r} from {st.agent_id} bounced ({ev.reason})",
              counters=revise(st.counters, messages_bounced=st.counters.messages_bounced + 1))


def _messages_consumed(ctx: FoldContext, st: AgentState, ev: MessagesConsumed) -> Decision:
    p = ctx.params
    if len(ev.message_ids) > p.max_ids_per_event:
        return _invalid(ev, f"message_ids has more than {p.max_ids_per_event} ids")
    if not ev.message_ids:
        return ok(consume=_STEP, inbox=Inbox())
    wanted = set(ev.message_ids)
    present = {m.message_id for m in st.inbox.messages}
    missing = sorted(wanted - present)
    if missing:
        return reject(Reason.UNKNOWN_MESSAGE, f"messages {missing[:5]} are not in the inbox of {st.agent_id}")
    keep = tuple(m for m in st.inbox.messages if m.message_id not in wanted)
    return ok(consume=_STEP, inbox=Inbox(messages=keep, nbytes=sum(len(m.json_bytes()) for m in keep)))


def _spawn_requested(ctx: FoldContext, st: AgentState, ev: SpawnRequested) -> Decision:
    p = ctx.params
    problem = (
        check_agent_id("child_id", ev.child_id, p)
        or check_name("name", ev.name, p)
        or (None if 0 <= ev.priority <= 100 else f"priority {ev.priority} is outside 0-100")
        or caps_problem(ev.capabilities, p)
        or check_budgets("budgets", ev.budgets)
        or check_metadata("metadata", ev.metadata, p)
    )
    if problem:
        return _invalid(ev, problem)
    if ev.child_id == st.agent_id:
        return _invalid(ev, "child_id is the parent itself")
    extra = sorted(set(ev.capabilities) - set(st.capabilities.names))
    if extra:
        return reject(Reason.CAPABILITY_DENIED, f"child {ev.child_id!r} asks for capabilities {extra} that its parent "
                      f"{st.agent_id} does not have; a child gets at most its parent's capabilities")
    return ok(f"SpawnRequested accepted; the kernel writes AgentSpawned for {ev.child_id}",
              consume=_STEP,
              counters=revise(st.counters, children_requested=st.counters.children_requested + 1))


HANDLERS: Final[dict[str, Handler]] = {
    "ContextAppended": _context_appended,
    "MemoryStored": _memory_stored,
    "MemoryEmbedded": _memory_embedded,
    "MemoryRecalled": _memory_recalled,
    "MemoryForgotten": _memory_forgotten,
    "LlmCallRequested": _llm_requested,
    "ToolCallRequested": _tool_requested,
    "LlmCallCompleted": _llm_completed,
    "ToolCallCompleted": _tool_completed,
    "CallTimedOut": _call_timed_out,
    "MessageSent": _message_sent,
    "MessageDelivered": _message_delivered,
    "MessageBounced": _message_bounced,
    "MessagesConsumed": _messages_consumed,
    "SpawnRequested": _spawn_requested,
}
