"""The lifecycle table and the handlers of lifecycle and control events.

``LIFECYCLE`` is ARCHITECTURE.md's table as data: for each event type, the statuses it
is allowed in. The fold rejects anything else (``illegal_transition``, or
``not_spawned`` for a key never spawned) before a handler runs. The handlers here decide
the status the event leads to; ``aosk.kernel.work`` has the work, call and IPC events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, cast

from aosk.events import (
    AgentFailed,
    AgentForked,
    AgentKilled,
    AgentResumed,
    AgentSpawned,
    AgentStarted,
    AgentSuspended,
    AgentTerminated,
    AgentWaiting,
    BudgetUpdated,
    CapabilityGranted,
    CapabilityRevoked,
    CheckpointRequested,
    ForkRequested,
    KernelUpgraded,
    RecordQuarantined,
)
from aosk.kernel.copying import revise
from aosk.kernel.decision import Decision, FoldContext, Handler, ok, reject
from aosk.kernel.hygiene import check_agent_id, check_budgets, check_metadata, check_name
from aosk.kernel.paging import fit, make_entry
from aosk.kernel.params import FoldParams, params_for
from aosk.kernel.state import (
    FINAL_STATUSES,
    NON_FINAL_STATUSES,
    AgentState,
    Calls,
    Capabilities,
    ContextEntry,
    Identity,
    Life,
    Status,
    Window,
    evolve,
)
from aosk.kernel.statecodec import StateDecodeError, decode_state
from aosk.kernel.tasks import protected_ids, running_task_ids
from aosk.kernel.verdict import Reason

__all__ = ["LIFECYCLE", "WORK_TYPES", "COMPLETION_TYPES", "HANDLERS", "fork_state", "BUDGET_EXHAUSTED_NOTE"]

_ANY_SPAWNED: Final = NON_FINAL_STATUSES | FINAL_STATUSES
_ALL: Final = _ANY_SPAWNED | {Status.NONE}

WORK_TYPES: Final = frozenset(
    {
        "ContextAppended", "LlmCallRequested", "ToolCallRequested", "MemoryStored",
        "MemoryRecalled", "MessageSent", "MessagesConsumed", "SpawnRequested",
    }
)
COMPLETION_TYPES: Final = frozenset({"LlmCallCompleted", "ToolCallCompleted", "CallTimedOut"})

BUDGET_EXHAUSTED_NOTE: Final = "budget_exhausted"
"""The ``suspend_reason`` the fold writes when an event uses up a budget."""

_table: dict[str, frozenset[str]] = {
    "AgentSpawned": frozenset({Status.NONE}),
    "AgentForked": frozenset({Status.NONE}),
    "AgentStarted": frozenset({Status.READY}),
    "AgentWaiting": frozenset({Status.RUNNING}),
    "AgentResumed": frozenset({Status.WAITING, Status.SUSPENDED}),
    "AgentSuspended": frozenset({Status.READY, Status.RUNNING, Status.WAITING}),
    "BudgetUpdated": NON_FINAL_STATUSES,
    "AgentTerminated": NON_FINAL_STATUSES,
    "AgentKilled": NON_FINAL_STATUSES,
    "AgentFailed": NON_FINAL_STATUSES,
    "ForkRequested": _ANY_SPAWNED,
    "KernelUpgraded": _ALL,
    "RecordQuarantined": _ALL,
}
for _t in WORK_TYPES:
    _table[_t] = frozenset({Status.RUNNING})
for _t in COMPLETION_TYPES:
    _table[_t] = frozenset({Status.RUNNING, Status.WAITING, Status.SUSPENDED})
for _t in (
    "MessageDelivered", "MessageBounced", "MemoryEmbedded", "MemoryForgotten",
    "CheckpointRequested", "CapabilityGranted", "CapabilityRevoked",
    "TaskSubmitted", "TaskCompleted", "TaskFailed", "TaskCancelled",
):
    _table[_t] = NON_FINAL_STATUSES

LIFECYCLE: Final[Mapping[str, frozenset[str]]] = MappingProxyType(_table)
"""Event type -> the statuses it is allowed in (ARCHITECTURE.md's lifecycle table)."""


def _note(s: str, p: FoldParams) -> str:
    return s[: p.note_max_chars]


def caps_problem(caps: tuple[str, ...], p: FoldParams) -> str | None:
    if len(set(caps)) > p.max_capabilities:
        return f"capabilities has more than {p.max_capabilities} entries"
    for c in caps:
        problem = check_name("capability", c, p)
        if problem:
            return problem
    return None


def _priority(x: int) -> str | None:
    return None if 0 <= x <= 100 else f"priority {x} is outside 0-100"


# --- creation ----------------------------------------------------------------------------


def _spawned(ctx: FoldContext, st: AgentState, ev: AgentSpawned) -> Decision:
    p = ctx.params
    problem = (
        check_agent_id("agent_id", ev.agent_id, p)
        or check_name("tenant_id", ev.tenant_id, p)
        or (check_agent_id("parent_id", ev.parent_id, p) if ev.parent_id is not None else None)
        or check_name("name", ev.name, p)
        or _priority(ev.priority)
        or caps_problem(ev.capabilities, p)
        or check_budgets("budgets", ev.budgets)
        or check_metadata("metadata", ev.metadata, p)
    )
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"AgentSpawned rejected: {problem}")
    identity = Identity(
        tenant_id=ev.tenant_id,
        parent_id=ev.parent_id,
        name=ev.name,
        priority=ev.priority,
        metadata=tuple(sorted(ev.metadata.items())),
        spawned_at_ms=ctx.record.timestamp,
    )
    return ok(
        status=Status.READY,
        identity=identity,
        budgets=ev.budgets,
        capabilities=Capabilities(names=tuple(sorted(set(ev.capabilities)))),
    )


def fork_state(
    source: AgentState,
    *,
    new_agent_id: str,
    fold_version: int | None = None,
    seq: int = 0,
    forked_at_ms: int | None = None,
) -> AgentState:
    """The state a fork of ``source`` starts from, on key ``new_agent_id``.

    Kept: identity (tenant, parent, name, priority, metadata), capabilities, budgets and
    usage, counters, the context window. Reset, because they belonged to the source's
    key and partition: the id, ``seq``, status (READY), status notes, open and timed-out
    calls, the inbox and the dedupe memory. ``forked_from`` / ``fork_seq`` record the
    origin. The fold applies this when it accepts ``AgentForked`` (keeping the new key's
    own ``seq`` and dedupe memory).
    """
    if source.identity is None:
        raise ValueError(f"cannot fork {source.agent_id}: it was not spawned at seq {source.seq}")
    version = source.fold_version if fold_version is None else fold_version
    window = source.window
    if version != source.fold_version:
        p = params_for(version)
        entries = tuple(
            make_entry(entry_id=e.entry_id, role=e.role, content=e.content, tokens=e.tokens,
                       importance=e.importance, seq=e.seq, params=p)
            for e in window.entries
        )
        window = Window(entries=entries, tokens=window.tokens, nbytes=window.nbytes)
    identity = replace(
        source.identity,
        forked_from=source.agent_id,
        fork_seq=source.seq,
        spawned_at_ms=source.identity.spawned_at_ms if forked_at_ms is None else forked_at_ms,
    )
    return AgentState(
        agent_id=new_agent_id,
        fold_version=version,
        seq=seq,
        status=Status.READY,
        identity=identity,
        budgets=source.budgets,
        usage=source.usage,
        capabilities=source.capabilities,
        counters=source.counters,
        window=window,
    )


_FORK_FIELDS: Final = (
    "status", "identity", "budgets", "usage", "capabilities", "counters", "life", "window", "inbox", "calls",
)


def _forked(ctx: FoldContext, st: AgentState, ev: AgentForked) -> Decision:
    problem = check_agent_id("agent_id", ev.agent_id, ctx.params)
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"AgentForked rejected: {problem}")
    if hashlib.sha256(ev.state).digest() != ev.source_state_hash:
        return reject(Reason.INVALID_FORK, "AgentForked state does not hash to source_state_hash; "
                      "the worker must carry the canonical state bytes it hashed")
    try:
        src = decode_state(ev.state)
    except StateDecodeError as e:
        return reject(Reason.INVALID_FORK, f"AgentForked state does not decode: {e}")
    if src.agent_id != ev.source_agent_id or src.seq != ev.source_seq:
        return reject(Reason.INVALID_FORK, f"AgentForked carries the state of {src.agent_id} at seq {src.seq}, "
                      f"not of {ev.source_agent_id} at seq {ev.source_seq}")
    if src.identity is None:
        return reject(Reason.INVALID_FORK, f"{ev.source_agent_id} was not spawned at seq {ev.source_seq}; "
                      "nothing to fork")
    if src.identity.tenant_id != ev.tenant_id:
        return reject(Reason.TENANT_MISMATCH, f"AgentForked for tenant {ev.tenant_id!r} carries an agent of "
                      f"tenant {src.identity.tenant_id!r}")
    new = fork_state(src, new_agent_id=ctx.key, fold_version=st.fold_version, seq=ctx.seq,
                     forked_at_ms=ctx.record.timestamp)
    return ok(f"agent {ctx.key} forked from {src.agent_id} at seq {src.seq} (READY)",
              **{f: getattr(new, f) for f in _FORK_FIELDS})


# --- status changes ------------------------------------------------------------------------


def _started(ctx: FoldContext, st: AgentState, ev: AgentStarted) -> Decision:
    return ok(status=Status.RUNNING)


def _waiting(ctx: FoldContext, st: AgentState, ev: AgentWaiting) -> Decision:
    return ok(status=Status.WAITING, life=revise(st.life, waiting_on=_note(ev.on, ctx.params)))


def _resumed(ctx: FoldContext, st: AgentState, ev: AgentResumed) -> Decision:
    if st.status == Status.WAITING:
        return ok(status=Status.RUNNING, life=revise(st.life, waiting_on=None))
    exhausted = st.exhausted()
    if exhausted:
        return reject(
            Reason.BUDGET_EXHAUSTED,
            f"agent {st.agent_id} is SUSPENDED ({st.life.suspend_reason}) and its "
            f"{'/'.join(exhausted)} budget is at 0; send BudgetUpdated to resume",
        )
    return ok(status=Status.READY, life=revise(st.life, suspend_reason=None))


def _suspended(ctx: FoldContext, st: AgentState, ev: AgentSuspended) -> Decision:
    life = revise(st.life, suspend_reason=_note(ev.reason, ctx.params), waiting_on=None)
    return ok(status=Status.SUSPENDED, life=life)


def _closed_calls(st: AgentState) -> Calls:
    return Calls(open=(), timed_out=st.calls.timed_out)


def _terminated(ctx: FoldContext, st: AgentState, ev: AgentTerminated) -> Decision:
    life = Life(exit_code=ev.exit_code, exit_reason=_note(ev.reason, ctx.params))
    return ok(status=Status.TERMINATED, life=life, calls=_closed_calls(st))


def _killed(ctx: FoldContext, st: AgentState, ev: AgentKilled) -> Decision:
    life = Life(signal=_note(ev.signal, ctx.params), killed_by=_note(ev.by, ctx.params))
    return ok(status=Status.TERMINATED, life=life, calls=_closed_calls(st))


def _failed(ctx: FoldContext, st: AgentState, ev: AgentFailed) -> Decision:
    return ok(status=Status.ERROR, life=Life(error=_note(ev.error, ctx.params)), calls=_closed_calls(st))


# --- control --------------------------------------------------------------------------------


def _budget_updated(ctx: FoldContext, st: AgentState, ev: BudgetUpdated) -> Decision:
    problem = check_budgets("budgets", ev.budgets)
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"BudgetUpdated rejected: {problem}")
    changes: dict[str, Any] = {"budgets": ev.budgets}
    window, paged = st.window, cast("tuple[ContextEntry, ...]", ())
    if st.window.tokens > ev.budgets.context_window_tokens:
        protect = protected_ids(st) if ctx.params.runs_tasks else frozenset()
        keep = running_task_ids(st) if ctx.params.runs_tasks else frozenset()
        fitted = fit(st.window, add=None, budget_tokens=ev.budgets.context_window_tokens, params=ctx.params,
                     protect=protect, keep_last=keep)
        assert fitted is not None  # without an entry to add, fit always returns
        window, paged = fitted
        changes["window"] = window
        if paged:
            changes["counters"] = revise(st.counters, memories_stored=st.counters.memories_stored + len(paged))
    msg = ""
    if st.status == Status.SUSPENDED and st.life.suspend_reason == BUDGET_EXHAUSTED_NOTE:
        after = evolve(st, {"budgets": ev.budgets})
        if not after.exhausted():
            changes["status"] = Status.READY
            changes["life"] = revise(st.life, suspend_reason=None)
        else:
            msg = (f"BudgetUpdated accepted; agent {st.agent_id} stays SUSPENDED: its "
                   f"{'/'.join(after.exhausted())} budget is still at 0")
    return ok(msg, paged_out=paged, **changes)


def _cap_granted(ctx: FoldContext, st: AgentState, ev: CapabilityGranted) -> Decision:
    problem = check_name("capability", ev.capability, ctx.params)
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"CapabilityGranted rejected: {problem}")
    if ev.capability in st.capabilities:
        return ok()
    if len(st.capabilities) >= ctx.params.max_capabilities:
        return reject(Reason.INVALID_PAYLOAD, f"agent {st.agent_id} already has {ctx.params.max_capabilities} "
                      "capabilities (the cap); revoke one first")
    names = tuple(sorted((*st.capabilities.names, ev.capability)))
    return ok(capabilities=Capabilities(names=names))


def _cap_revoked(ctx: FoldContext, st: AgentState, ev: CapabilityRevoked) -> Decision:
    if ev.capability not in st.capabilities:
        return ok()
    names = tuple(n for n in st.capabilities.names if n != ev.capability)
    return ok(capabilities=Capabilities(names=names))


def _checkpoint(ctx: FoldContext, st: AgentState, ev: CheckpointRequested) -> Decision:
    return ok()


def _fork_requested(ctx: FoldContext, st: AgentState, ev: ForkRequested) -> Decision:
    problem = check_agent_id("new_agent_id", ev.new_agent_id, ctx.params)
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"ForkRequested rejected: {problem}")
    if ev.new_agent_id == st.agent_id:
        return reject(Reason.INVALID_PAYLOAD, "ForkRequested rejected: new_agent_id is the agent itself")
    if not 1 <= ev.at_seq < ctx.seq:
        return reject(Reason.INVALID_PAYLOAD, f"ForkRequested rejected: at_seq {ev.at_seq} is not in "
                      f"1..{ctx.seq - 1} (the records of {st.agent_id} so far)")
    return ok(f"ForkRequested accepted; the kernel will write AgentForked on {ev.new_agent_id} "
              f"from {st.agent_id} at seq {ev.at_seq}")


def _kernel_upgraded(ctx: FoldContext, st: AgentState, ev: KernelUpgraded) -> Decision:
    v = ev.fold_version
    if v < 1:
        return reject(Reason.INVALID_PAYLOAD, f"KernelUpgraded rejected: fold_version {v} must be >= 1")
    if v < st.fold_version:
        return reject(Reason.VERSION_DOWNGRADE, f"KernelUpgraded to {v} ignored: partition {ctx.record.partition} "
                      f"already folds under version {st.fold_version} (versions never go back)")
    target = params_for(v)  # raises UnknownFoldVersion: this process must stop, not guess
    p = ctx.record.partition
    if not target.routes_by_partition:  # version 1: the partition count is neither needed nor recorded
        if v == st.fold_version:
            return ok(f"partition {p} already folds under version {v}")
        return ok(f"partition {p} folds under version {v} from offset {ctx.record.offset + 1} on", fold_version=v)
    # Versions that route keys by partition need the journal's partition count, recorded
    # once per partition and never changed by a later marker (keys would move silently).
    n = ev.partitions
    if n < 1:
        return reject(Reason.INVALID_PAYLOAD, f"KernelUpgraded to {v} rejected: fold version {v} needs the journal's "
                      "partition count (partitions >= 1); write the marker with `aosk kernel upgrade`, which "
                      "puts in the live count")
    if p >= n:
        return reject(Reason.INVALID_PAYLOAD, f"KernelUpgraded to {v} rejected: partitions={n} but the marker is on "
                      f"partition {p}; the count is not this journal's")
    if st.partitions and n != st.partitions:
        return reject(Reason.INVALID_PAYLOAD, f"KernelUpgraded to {v} rejected: partition {p} recorded "
                      f"{st.partitions} partitions, the marker says {n}; a recorded count never changes "
                      "(docs/recovery.md, \"A changed partition count\")")
    if v == st.fold_version and n == st.partitions:
        return ok(f"partition {p} already folds under version {v} with {n} partitions")
    return ok(f"partition {p} folds under version {v} with {n} partitions from offset {ctx.record.offset + 1} on",
              fold_version=v, partitions=n)


def _record_quarantined(ctx: FoldContext, st: AgentState, ev: RecordQuarantined) -> Decision:
    # The marker itself changes no state: readers honour it when they meet the record it
    # names (aosk.journal.Quarantines), which is always before the marker.
    if not 0 <= ev.quarantined_offset < ctx.record.offset:
        return reject(Reason.INVALID_PAYLOAD, f"RecordQuarantined rejected: quarantined_offset "
                      f"{ev.quarantined_offset} is not before the marker's offset {ctx.record.offset}")
    return ok(f"record {ctx.record.partition}:{ev.quarantined_offset} is quarantined: {ev.reason}")


HANDLERS: Final[dict[str, Handler]] = {
    "AgentSpawned": _spawned,
    "AgentForked": _forked,
    "AgentStarted": _started,
    "AgentWaiting": _waiting,
    "AgentResumed": _resumed,
    "AgentSuspended": _suspended,
    "AgentTerminated": _terminated,
    "AgentKilled": _killed,
    "AgentFailed": _failed,
    "BudgetUpdated": _budget_updated,
    "CapabilityGranted": _cap_granted,
    "CapabilityRevoked": _cap_revoked,
    "CheckpointRequested": _checkpoint,
    "ForkRequested": _fork_requested,
    "KernelUpgraded": _kernel_upgraded,
    "RecordQuarantined": _record_quarantined,
}
