"""Events the kernel derives, built deterministically.

A derived event's id is ``uuid5(AOSK_NAMESPACE, "<type>/<source event id>/<partition>/<offset>")``
of the record that caused it, its ``occurred_at`` is that record's broker timestamp in
microseconds, its tenant is the source's, ``causation_id`` the source event id and
``correlation_id`` the source's correlation id (or its event id). Re-deriving after a
crash therefore produces byte-identical events.

Also here, for workers: ``expired_calls`` / ``timeout_events`` (what to write as
``CallTimedOut`` once the partition's time passes a deadline) and ``fork_event`` (the
``AgentForked`` for a ``ForkRequested``, once the source state at ``at_seq`` is known).
"""

from __future__ import annotations

import uuid
from typing import Final, TypedDict

from aosk.events import (
    AgentForked,
    AgentSpawned,
    CallTimedOut,
    Event,
    ForkRequested,
    MessageBounced,
    MessageDelivered,
    MessageSent,
    SpawnRequested,
)
from aosk.kernel.state import AgentState, OpenCall, Status, encode_state, state_hash
from aosk.kernel.verdict import Record

__all__ = [
    "AOSK_NAMESPACE",
    "BOUNCE_REASONS",
    "derived_event_id",
    "derived_for",
    "child_spawned",
    "delivery",
    "bounce",
    "expired_calls",
    "timeout_events",
    "fork_event",
]

AOSK_NAMESPACE: Final = uuid.UUID("6b1f3c52-5a43-4f0e-9a57-0a05c0de0001")
"""Namespace of every uuid5 the kernel derives."""

_TIMEOUT_STATUSES: Final = frozenset({Status.RUNNING, Status.WAITING, Status.SUSPENDED})

BOUNCE_REASONS: Final = frozenset({"recipient_unavailable", "tenant_mismatch", "inbox_full", "undeliverable"})
"""Rejection reasons of a ``MessageDelivered`` that send a ``MessageBounced`` back. Every
rejection after the delivery high-water mark gate has one of these; earlier rejections
(a malformed or forged record) bounce nothing."""


def derived_event_id(kind: str, source_event_id: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(AOSK_NAMESPACE, f"{kind}/{source_event_id}/{partition}/{offset}"))


class _Header(TypedDict):
    event_id: str
    agent_id: str
    tenant_id: str
    occurred_at: int
    origin: str
    correlation_id: str | None
    causation_id: str | None


def _header(kind: str, src: Event, *, agent_id: str, tenant_id: str, partition: int, offset: int,
            timestamp_ms: int) -> _Header:
    return {
        "event_id": derived_event_id(kind, src.event_id, partition, offset),
        "agent_id": agent_id,
        "tenant_id": tenant_id,
        "occurred_at": timestamp_ms * 1000,
        "origin": "kernel",
        "correlation_id": src.correlation_id or src.event_id,
        "causation_id": src.event_id,
    }


def child_spawned(req: SpawnRequested, *, tenant_id: str, partition: int, offset: int,
                  timestamp_ms: int) -> AgentSpawned:
    """The child's ``AgentSpawned`` for an accepted ``SpawnRequested`` (parent's key)."""
    return AgentSpawned(
        **_header("AgentSpawned", req, agent_id=req.child_id, tenant_id=tenant_id,
                  partition=partition, offset=offset, timestamp_ms=timestamp_ms),
        parent_id=req.agent_id,
        name=req.name,
        priority=req.priority,
        capabilities=tuple(sorted(set(req.capabilities))),
        budgets=req.budgets,
        metadata=dict(sorted(req.metadata.items())),
    )


def delivery(sent: MessageSent, *, tenant_id: str, partition: int, offset: int,
             timestamp_ms: int) -> MessageDelivered:
    """The recipient's ``MessageDelivered`` for an accepted ``MessageSent``."""
    return MessageDelivered(
        **_header("MessageDelivered", sent, agent_id=sent.to_agent_id, tenant_id=tenant_id,
                  partition=partition, offset=offset, timestamp_ms=timestamp_ms),
        message_id=sent.message_id,
        from_agent_id=sent.agent_id,
        from_tenant_id=tenant_id,
        body=sent.body,
        source_partition=partition,
        source_offset=offset,
    )


def bounce(delivered: MessageDelivered, reason: str, *, partition: int, offset: int,
           timestamp_ms: int) -> MessageBounced:
    """The sender's ``MessageBounced`` for a rejected ``MessageDelivered``."""
    return MessageBounced(
        **_header("MessageBounced", delivered, agent_id=delivered.from_agent_id,
                  tenant_id=delivered.tenant_id, partition=partition, offset=offset,
                  timestamp_ms=timestamp_ms),
        message_id=delivered.message_id,
        reason=str(reason),  # a plain str, as decoded events hold (a Reason member is a str subclass)
        source_partition=partition,
        source_offset=offset,
    )


def derived_for(kind: str, reason: str, record: Record, tenant_id: str | None) -> tuple[Event, ...]:
    """The events a verdict derives, from the verdict's kind and reason, the record and
    the agent's tenant: the single rule used by ``apply`` and again when a redelivered
    record's original verdict is re-sent (kept verdicts do not store them).

    * ``MessageSent`` accepted -> ``MessageDelivered`` on the recipient's key;
    * ``SpawnRequested`` accepted -> the child's ``AgentSpawned`` (kernel origin);
    * ``MessageDelivered`` (kernel origin) rejected for a ``BOUNCE_REASONS`` reason ->
      ``MessageBounced`` on the sender's key.
    """
    ev = record.event
    if ev is None:
        return ()
    p, o, t = record.partition, record.offset, record.timestamp
    if kind == "accepted":
        if type(ev) is MessageSent and tenant_id is not None:
            return (delivery(ev, tenant_id=tenant_id, partition=p, offset=o, timestamp_ms=t),)
        if type(ev) is SpawnRequested and tenant_id is not None:
            return (child_spawned(ev, tenant_id=tenant_id, partition=p, offset=o, timestamp_ms=t),)
    elif kind == "rejected" and type(ev) is MessageDelivered and reason in BOUNCE_REASONS and ev.origin == "kernel":
        return (bounce(ev, reason, partition=p, offset=o, timestamp_ms=t),)
    return ()


def expired_calls(state: AgentState, partition_time_ms: int) -> tuple[OpenCall, ...]:
    """Open calls whose deadline the partition's time has passed (``deadline < time``),
    in request order, when a ``CallTimedOut`` would be accepted (RUNNING, WAITING or
    SUSPENDED). The worker writes one ``CallTimedOut`` for each (``timeout_events``)."""
    if state.status not in _TIMEOUT_STATUSES:
        return ()
    return tuple(c for c in state.calls.open if c.deadline_ms < partition_time_ms)


def timeout_events(state: AgentState, partition_time_ms: int) -> tuple[CallTimedOut, ...]:
    """``CallTimedOut`` events for ``expired_calls``: id ``uuid5(CallTimedOut/<request
    event id>/<call id>)``, ``occurred_at`` the deadline, so a worker that writes one
    twice writes the same event (and the fold treats the second as ``call_not_open``)."""
    tenant = state.tenant_id or ""
    out = []
    for c in expired_calls(state, partition_time_ms):
        out.append(
            CallTimedOut(
                event_id=str(uuid.uuid5(AOSK_NAMESPACE, f"CallTimedOut/{c.request_event_id}/{c.call_id}")),
                agent_id=state.agent_id,
                tenant_id=tenant,
                occurred_at=c.deadline_ms * 1000,
                origin="kernel",
                correlation_id=c.request_event_id,
                causation_id=c.request_event_id,
                call_id=c.call_id,
            )
        )
    return tuple(out)


def fork_event(source_state: AgentState, request: ForkRequested, *, partition: int, offset: int,
               timestamp_ms: int) -> AgentForked:
    """The ``AgentForked`` for ``request`` (at ``partition``/``offset``), carrying
    ``source_state``: the source agent's state after the record with ``seq == at_seq``
    (a checkpoint plus the journal after it, folded with ``apply``)."""
    if source_state.seq != request.at_seq or source_state.agent_id != request.agent_id:
        raise ValueError(
            f"fork of {request.agent_id} at seq {request.at_seq} needs that state, "
            f"got {source_state.agent_id} at seq {source_state.seq}"
        )
    return AgentForked(
        **_header("AgentForked", request, agent_id=request.new_agent_id,
                  tenant_id=request.tenant_id, partition=partition, offset=offset,
                  timestamp_ms=timestamp_ms),
        source_agent_id=request.agent_id,
        source_seq=request.at_seq,
        source_state_hash=state_hash(source_state),
        state=encode_state(source_state),
    )
