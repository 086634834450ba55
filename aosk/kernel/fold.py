"""``apply``: one journal record into one agent's state, and the verdict.

The gates every record passes, in order (the first that fails decides):

0. the route (``aosk.kernel.routing``): from fold version 2 on, a keyed record that is not
   on its key's murmur2 partition folds into ``~p<partition>`` (never its key);
1. offset already applied to this key -> the slot unchanged and the ORIGINAL verdict;
   (from here on the record takes the key's next ``seq``)
   a misrouted record (step 0) -> ``wrong_partition``, whatever it holds;
2. quarantined (an unknown-fingerprint record named by a later ``RecordQuarantined``
   marker, resolved by the reader: ``aosk.journal.Quarantines``) -> ``quarantined``;
   undecodable -> ``undecodable``; malformed event id or origin -> ``invalid_payload``;
3. client event id among the key's last K -> ``duplicate`` (the id is remembered even
   when the record is then rejected, so a retry of a rejected event is a duplicate too);
4. key / agent_id disagree -> ``key_mismatch``; a partition marker (``KernelUpgraded``,
   ``RecordQuarantined``) with a key -> ``not_partition_marker``;
5. kernel-only type (or a child ``AgentSpawned``) with ``origin=client`` -> ``kernel_only``;
6. generic payload hygiene -> ``invalid_payload``;
7. ``MessageDelivered`` / ``MessageBounced`` at or below their source partition's
   high-water mark -> ``duplicate`` (the mark advances even if the record is then
   rejected, so a re-sent delivery never lands after a bounce);
8. lifecycle: ``already_spawned`` / ``not_spawned`` / ``tenant_mismatch`` /
   ``illegal_transition``; a work event while a budget is at 0 -> ``budget_exhausted``;
9. the event's handler (``aosk.kernel.lifecycle``, ``aosk.kernel.work``); then budget
   accounting: the event that brings a budget to 0 is accepted and suspends the agent.

Derived events come from one rule, ``derive.derived_for(kind, reason, record, tenant)``:
an accepted ``MessageSent`` / ``SpawnRequested`` derives the delivery / the child's
spawn; a ``MessageDelivered`` rejected after gate 7 bounces (``MessageBounced`` to the
sender with the rejection reason). Kept verdicts do not store them: a redelivery
re-derives them from the same record, byte for byte.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from aosk.errors import Quarantined, UnknownFingerprint
from aosk.events import KERNEL_ONLY_TYPES, ORIGINS, AgentSpawned, Event, MessageBounced, MessageDelivered
from aosk.kernel import lifecycle, tasks, work
from aosk.kernel.copying import revise
from aosk.kernel.decision import Decision, FoldContext, Handler, dup, reject
from aosk.kernel.derive import BOUNCE_REASONS, derived_for
from aosk.kernel.hygiene import check_fields, check_uuid
from aosk.kernel.lifecycle import BUDGET_EXHAUSTED_NOTE, LIFECYCLE, WORK_TYPES
from aosk.kernel.params import INITIAL_VERSION, params_for
from aosk.kernel.routing import route
from aosk.kernel.slot import AgentSlot
from aosk.kernel.state import FINAL_STATUSES, AgentState, Dedupe, Status, Usage, evolve, placeholder, state_hash
from aosk.kernel.verdict import Kind, Reason, Record, Verdict, new_verdict

__all__ = ["apply", "KERNEL_ONLY"]

_PARTITION_MARKERS: Final = frozenset({"KernelUpgraded", "RecordQuarantined"})
"""Kernel events about a partition, produced without a key (its pseudo-agent folds them)."""

KERNEL_ONLY: Final = KERNEL_ONLY_TYPES | _PARTITION_MARKERS
"""Types accepted only with ``origin=kernel`` (``AgentSpawned`` too when it has a parent).
The partition markers are added by the fold: a client must never switch semantics or
quarantine a record."""

_HANDLERS: Final[dict[str, Handler]] = {**lifecycle.HANDLERS, **work.HANDLERS, **tasks.HANDLERS}
assert set(_HANDLERS) == set(LIFECYCLE), "one handler per event type in the lifecycle table"

_CREATION: Final = frozenset({"AgentSpawned", "AgentForked"})


class _Rule(NamedTuple):
    """What gate 8 and the handler need to know about one event type, looked up once."""

    allowed: frozenset[str]
    """The statuses the type is allowed in (``LIFECYCLE``)."""
    creation: bool
    work: bool
    """A work event: rejected while a budget is at 0."""
    handler: Handler


_RULES: Final[dict[str, _Rule]] = {
    name: _Rule(allowed, name in _CREATION, name in WORK_TYPES, _HANDLERS[name]) for name, allowed in LIFECYCLE.items()
}

# Enum members bound once: on Python 3.11 ``Kind.ACCEPTED`` is a descriptor call (~0.2 us),
# and these are read for every record.
_ACCEPTED: Final = Kind.ACCEPTED
_REJECTED: Final = Kind.REJECTED
_NONE: Final = Status.NONE

_SUSPEND_ON_CROSS: Final = frozenset({Status.RUNNING, Status.WAITING})
_CHECKPOINT_STATUSES: Final = FINAL_STATUSES | {Status.SUSPENDED}


def apply(
    slot: AgentSlot | None, record: Record, *, version: int | None = None, partitions: int = 0,
    hash_state: bool = True, keep_verdicts: int = 0,
) -> tuple[AgentSlot, Verdict]:
    """Fold ``record`` into ``slot`` (None: the key has no record yet).

    ``version`` is the fold version in force at the record's position on its partition:
    ``partition_version`` of the partition's pseudo-agent (``aosk.kernel.folding``).
    None means the version the slot's state already has (``INITIAL_VERSION`` for a new
    key), which is right until a ``KernelUpgraded`` marker is in the journal.

    ``partitions`` is the journal's partition count recorded on the record's partition
    (the pseudo-agent's ``AgentState.partitions``; 0: none recorded). Together with
    ``version`` it decides the key the record folds into (``aosk.kernel.routing.route``,
    the rule ``fold_key`` shares): under a version that routes by partition, a keyed
    record off its key's murmur2 partition folds into ``~p<partition>`` and is rejected
    ``wrong_partition``. ``slot`` must be the slot of that key (``fold_key``); a slot of
    another key raises ``ValueError``, so a misrouted record can never land in its key's
    state by accident. ``fold_args(partition_state)`` gives both arguments.

    ``keep_verdicts`` is how many verdicts the returned slot keeps in ``recent`` (for
    redeliveries: a worker's setting, outside the hash; 0 keeps none, as projectors do).

    ``hash_state=False`` leaves ``verdict.state_hash`` empty (``b""``) instead of hashing
    the new state: for batch folders (projectors) that need the hash only of some states
    (``state_hash(slot.state)``, memoised on the state). Everything else is identical.

    Pure: no clock, no randomness, no I/O, nothing but the arguments. Raises
    ``UnknownFingerprint`` (the record's error) and ``UnknownFoldVersion``: both mean
    this process cannot fold the partition and must stop it, not skip the record.
    """
    home: int | None = None
    if not partitions:  # the common cases first: no routing to decide
        key = f"~p{record.partition}" if record.key is None else record.key
    else:
        in_force = version if version is not None else (slot.state.fold_version if slot else INITIAL_VERSION)
        key, home = route(record, in_force, partitions)
    if slot is None:
        slot = AgentSlot(placeholder(key, INITIAL_VERSION if version is None else version))
    else:
        if slot.state.agent_id != key:
            raise ValueError(
                f"record {record.partition}:{record.offset} folds into {key!r}, not into the slot of "
                f"{slot.state.agent_id!r}; pick the slot with aosk.kernel.fold_key"
            )
        if record.offset <= slot.last_offset:
            return slot, _redelivered(slot, record, key, hash_state)
    if isinstance(record.error, UnknownFingerprint):
        raise record.error
    if (record.event is None) == (record.error is None):
        raise ValueError("a Record carries exactly one of event and error")

    st = slot.state
    if version is not None and version != st.fold_version:
        st = _switch_version(st, version)
    params = params_for(st.fold_version)
    seq = st.seq + 1
    ctx = FoldContext(record, key, seq, params)
    ev = record.event
    name = type(ev).__name__ if ev is not None else None
    if home is None:
        decision, dedupe = _judge(ctx, st, ev)
    else:
        decision, dedupe = _misrouted(record, home, partitions), st.dedupe

    # The gates' bookkeeping (dedupe memory) is kept whatever the verdict; the decision's
    # changes only when accepted.
    changes: dict[str, Any] = {} if dedupe is st.dedupe else {"dedupe": dedupe}
    if decision.kind == _ACCEPTED:
        changes.update(decision.changes)
        if decision.consume is not None:
            decision = _account(st, decision, changes)
        if st.tasks.queue and changes.get("status", st.status) in FINAL_STATUSES and params.runs_tasks:
            # Killed, terminated or failed: every task ends, its open calls with it.
            how = "cancelled" if name != "AgentFailed" else "failed"
            changes.update(tasks.end_all_tasks(st, how, f"agent_{changes['status'].lower()}", params,
                                               calls_after=changes.get("calls", st.calls)))
    changes["seq"] = seq
    new = evolve(st, changes)

    checkpoint = new.status != _NONE and seq % params.checkpoint_interval == 0
    if decision.kind == _ACCEPTED and not checkpoint:
        checkpoint = name == "CheckpointRequested" or (
            new.status != st.status and new.status in _CHECKPOINT_STATUSES
        )
    verdict = new_verdict(
        kind=decision.kind,
        reason=decision.reason,
        message=decision.message or _default_message(name, new, key),
        agent_id=key,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        event_id=ev.event_id if ev is not None else None,
        event_type=name,
        status=new.status,
        seq=seq,
        state_hash=state_hash(new) if hash_state else b"",
        fold_version=params.version,
        derived=derived_for(decision.kind, decision.reason, record, st.tenant_id),
        paged_out=decision.paged_out,
        checkpoint_due=checkpoint,
    )
    kept = verdict if not (verdict.paged_out or verdict.derived) else revise(verdict, paged_out=(), derived=())
    recent: tuple[Verdict, ...] = slot.recent
    if keep_verdicts <= 0:
        recent = ()
    elif len(recent) < keep_verdicts:
        recent = (*recent, kept)
    else:  # the newest keep_verdicts - 1, then this one (recent[-0:] would be all of them)
        recent = (*recent[len(recent) - keep_verdicts + 1:], kept)
    return AgentSlot(new, record.offset, recent), verdict


def _misrouted(record: Record, home: int, partitions: int) -> Decision:
    """A keyed record off its key's murmur2 partition: rejected on the partition's
    pseudo-agent (nothing but its ``seq`` moves), whatever the record holds."""
    ev = record.event
    what = type(ev).__name__ if ev is not None else "an undecodable record"
    return reject(Reason.WRONG_PARTITION, f"{what} with key {record.key!r} is on partition {record.partition}, but "
                  f"that key belongs to partition {home} of {partitions} (murmur2); the producer must use the murmur2 "
                  "partitioner (the AOSK SDK does: partitioner=murmur2_random). Rejected and kept in the journal on "
                  f"~p{record.partition}, a copy goes to the dead-letter topic; produce it again through the SDK")


def _default_message(name: str | None, st: AgentState, key: str) -> str:
    return f"{name} accepted; agent {key} is {st.status}"


def _switch_version(st: AgentState, version: int) -> AgentState:
    if version < st.fold_version:
        raise ValueError(
            f"version {version} is older than the version {st.fold_version} of {st.agent_id}'s state; "
            "pass the version in force on the record's partition"
        )
    params_for(version)  # raises UnknownFoldVersion
    # No version so far changes the state's shape (2 and 3 only add rules): no migration
    # yet. A version that changes the shape or the paging of the state migrates it here,
    # step by step.
    return evolve(st, {"fold_version": version})


def _redelivered(slot: AgentSlot, record: Record, key: str, hash_state: bool) -> Verdict:
    original = slot.verdict_at(record.offset)
    if original is not None:
        derived = derived_for(original.kind, original.reason, record, slot.state.tenant_id)
        return revise(original, derived=derived) if derived else original
    ev = record.event
    st = slot.state
    return Verdict(
        kind=Kind.DUPLICATE,
        reason=Reason.REDELIVERED,
        message=(f"offset {record.offset} of partition {record.partition} was applied to {key} before "
                 f"(last applied offset {slot.last_offset}); its verdict is no longer kept, nothing is re-sent"),
        agent_id=key,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        event_id=ev.event_id if ev is not None else None,
        event_type=type(ev).__name__ if ev is not None else None,
        status=st.status,
        seq=0,
        state_hash=state_hash(st) if hash_state else b"",
        fold_version=st.fold_version,
    )


def _hwm_of(pairs: tuple[tuple[int, int], ...], partition: int) -> int:
    for p, o in pairs:
        if p == partition:
            return o
    return -1


def _set_hwm(pairs: tuple[tuple[int, int], ...], partition: int, offset: int) -> tuple[tuple[int, int], ...]:
    return tuple(sorted({**dict(pairs), partition: offset}.items()))


def _judge(ctx: FoldContext, st: AgentState, ev: Event | None) -> tuple[Decision, Dedupe]:
    """Gates 2-9 for a record on its key's partition: the decision, and the dedupe memory
    after the gates (``st.dedupe`` itself when they left it as it was). The memory is kept
    even when the record is then rejected, so it is returned beside the decision."""
    rec = ctx.record
    dedupe = st.dedupe
    if ev is None:
        if type(rec.error) is Quarantined:
            q = rec.error
            return reject(Reason.QUARANTINED, f"record {rec.partition}:{rec.offset} (unknown schema fingerprint "
                          f"{q.fingerprint.hex()}) was quarantined by the marker at offset {q.marker_offset}: "
                          f"{q.reason}"), dedupe
        reason = getattr(rec.error, "reason", str(rec.error))
        return reject(Reason.UNDECODABLE, f"record {rec.partition}:{rec.offset} is undecodable ({reason}); "
                      "it stays in the journal and a copy goes to the dead-letter topic"), dedupe
    name = type(ev).__name__
    problem = check_uuid("event_id", ev.event_id) if type(ev.event_id) is str else "event_id must be a string"
    if problem is None and ev.origin not in ORIGINS:
        problem = f"origin {ev.origin!r} is not one of {list(ORIGINS)}"
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"{name} rejected: {problem}"), dedupe
    kernel = ev.origin == "kernel"

    if not kernel:
        if dedupe.seen(ev.event_id):
            return dup(Reason.DUPLICATE_EVENT_ID, f"event {ev.event_id} was already folded for {ctx.key} "
                       "(a client retry); see its original verdict"), dedupe
        dedupe = dedupe.with_event_id(ev.event_id, ctx.params.dedupe_window)

    if name in _PARTITION_MARKERS:
        if rec.key is not None:
            return reject(Reason.NOT_PARTITION_MARKER, f"{name} marks a partition: produce it without a "
                          "key (KernelUpgraded: to every partition)"), dedupe
    elif ev.agent_id != ctx.key:
        return reject(Reason.KEY_MISMATCH, f"{name} for agent {ev.agent_id!r} was produced with key {ctx.key!r}; "
                      "the key must be the agent id"), dedupe

    if not kernel and (name in KERNEL_ONLY or (type(ev) is AgentSpawned and ev.parent_id is not None)):
        what = "a child's AgentSpawned" if name == "AgentSpawned" else name
        how = "; ask the parent with SpawnRequested" if name == "AgentSpawned" else ""
        return reject(Reason.KERNEL_ONLY, f"{what} is written by the kernel only (origin=kernel){how}"), dedupe

    problem = check_fields(ev)
    if problem:
        return reject(Reason.INVALID_PAYLOAD, f"{name} rejected: {problem}"), dedupe

    if type(ev) is MessageDelivered or type(ev) is MessageBounced:
        return _ipc_judge(ctx, st, ev, name, dedupe)
    return _gate_and_handle(ctx, st, ev, name), dedupe


def _ipc_judge(
    ctx: FoldContext, st: AgentState, ev: MessageDelivered | MessageBounced, name: str, dedupe: Dedupe,
) -> tuple[Decision, Dedupe]:
    """Gate 7 and on for a delivery or a bounce; ``dedupe`` is the memory after gate 3."""
    delivered = type(ev) is MessageDelivered
    pairs = dedupe.delivery_hwm if delivered else dedupe.bounce_hwm
    if ev.source_offset <= _hwm_of(pairs, ev.source_partition):
        reason = Reason.ALREADY_DELIVERED if delivered else Reason.ALREADY_BOUNCED
        return dup(reason, f"{name} from {ev.source_partition}:{ev.source_offset} was already judged "
                   f"for {ctx.key}"), dedupe
    pairs = _set_hwm(pairs, ev.source_partition, ev.source_offset)
    dedupe = revise(dedupe, delivery_hwm=pairs) if delivered else revise(dedupe, bounce_hwm=pairs)
    decision = _gate_and_handle(ctx, st, ev, name)
    if type(ev) is not MessageDelivered or decision.kind != _REJECTED:
        return decision, dedupe
    if decision.reason in (Reason.NOT_SPAWNED, Reason.ILLEGAL_TRANSITION):
        decision = reject(Reason.RECIPIENT_UNAVAILABLE, f"{ctx.key} cannot receive messages ({st.status}); "
                          f"the message bounces to {ev.from_agent_id}")
    assert decision.reason in BOUNCE_REASONS, decision.reason
    return decision, dedupe


def _gate_and_handle(ctx: FoldContext, st: AgentState, ev: Event, name: str) -> Decision:
    rule = _RULES[name]
    allowed = rule.allowed
    status = st.status
    if rule.creation and status != _NONE:
        msg = f"agent {ctx.key} already exists ({status})"
        if ev.origin == "kernel":
            return dup(Reason.ALREADY_SPAWNED, msg)
        return reject(Reason.ALREADY_SPAWNED, msg + "; choose another agent id")
    if status == _NONE and status not in allowed:
        return reject(Reason.NOT_SPAWNED, f"agent {ctx.key} was never spawned; send AgentSpawned first")
    ident = st.identity
    if ident is not None and ev.tenant_id != ident.tenant_id and name not in _PARTITION_MARKERS:
        return reject(Reason.TENANT_MISMATCH, f"{name} is for tenant {ev.tenant_id!r}, agent {ctx.key} belongs to "
                      f"tenant {ident.tenant_id!r}")
    if status not in allowed:
        return reject(Reason.ILLEGAL_TRANSITION, _illegal_message(name, st, allowed))
    if rule.work:
        exhausted = st.exhausted()
        if exhausted:
            return reject(Reason.BUDGET_EXHAUSTED, f"agent {ctx.key} has no {'/'.join(exhausted)} budget left; "
                          "send BudgetUpdated with higher limits")
    return rule.handler(ctx, st, ev)


def _illegal_message(name: str, st: AgentState, allowed: frozenset[str]) -> str:
    if st.status == Status.SUSPENDED and st.life.suspend_reason == BUDGET_EXHAUSTED_NOTE:
        return f"agent {st.agent_id} is SUSPENDED (budget_exhausted); send BudgetUpdated to resume"
    if st.status in FINAL_STATUSES:
        return f"agent {st.agent_id} is {st.status} (final); {name} is not accepted any more"
    return f"{name} is not allowed when agent {st.agent_id} is {st.status} (only from {', '.join(sorted(allowed))})"


def _account(st: AgentState, decision: Decision, changes: dict[str, Any]) -> Decision:
    """Count ``decision.consume`` against the budgets (adding the new usage, and the
    suspension if any, to ``changes``); the event that brings one to 0 suspends."""
    assert decision.consume is not None
    tokens, tool_calls, steps = decision.consume
    u = st.usage
    changes["usage"] = Usage(tokens=u.tokens + tokens, tool_calls=u.tool_calls + tool_calls, steps=u.steps + steps)
    b = st.budgets
    assert b is not None
    # A budget is crossed by the event that takes its use from below the limit to it or past.
    crossed_tokens = tokens and u.tokens < b.max_tokens <= u.tokens + tokens
    crossed_tool_calls = tool_calls and u.tool_calls < b.max_tool_calls <= u.tool_calls + tool_calls
    crossed_steps = steps and u.steps < b.max_steps <= u.steps + steps
    if not (crossed_tokens or crossed_tool_calls or crossed_steps):
        return decision
    crossed = [name for name, hit in (("tokens", crossed_tokens), ("tool_calls", crossed_tool_calls),
                                      ("steps", crossed_steps)) if hit]
    status = changes.get("status", st.status)
    what = "/".join(crossed)
    if status in _SUSPEND_ON_CROSS:
        changes["status"] = Status.SUSPENDED
        changes["life"] = revise(changes.get("life", st.life), suspend_reason=BUDGET_EXHAUSTED_NOTE, waiting_on=None)
        msg = (f"accepted; agent {st.agent_id} used up its {what} budget and is now SUSPENDED (budget_exhausted); "
               "send BudgetUpdated to resume")
    else:
        msg = f"accepted; agent {st.agent_id} used up its {what} budget (it stays {status})"
    return Decision(Kind.ACCEPTED, Reason.BUDGET_EXHAUSTED, msg, decision.changes, decision.paged_out,
                    decision.consume)

