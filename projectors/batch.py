"""Folding one batch of journal records into projection rows (pure; no Kafka, no SQL).

Per record: ``apply`` (the shared fold), then the audit chain link, the checkpoint
policy and the memory changes. The fold runs with ``hash_state=False``: a state is
hashed only when it is stored (an agent's state at the end of a batch, a checkpoint),
not after every record -- the audit chain does not cover state hashes. Per-agent entries
(slot, chain head, verdict counts) come from a cache the caller owns; the fold writes into
an overlay on top of it, so a batch that is not committed (fenced, failed) leaves the
cache untouched.

A partition whose record cannot be folded here (an unknown schema fingerprint, an
unknown fold version, an agent key that already lives on another partition) stops at
that record: the records before it are kept, the partition is reported as stopped, and
nothing after it is folded until an operator fixes the cause (never skipped: a replay
with newer code would fold it, and the two would disagree). A record with an unknown
fingerprint is first looked up in ``quarantines`` (``aosk.journal.Quarantines``): a later
``RecordQuarantined`` marker naming it makes it fold as rejected ``quarantined``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aosk.errors import Inconsistent, PartitionCountChanged, UnknownFingerprint, UnknownFoldVersion
from aosk.journal import Quarantines
from aosk.kernel import (
    AgentSlot,
    Record,
    apply,
    check_partition_count,
    decode_state,
    encode_state,
    fold_args,
    pseudo_key,
    route,
    state_hash,
)
from aosk.kernel.state import EMPTY_TASKS, Status
from aosk.projectors.checkpoints import checkpoint_reason
from aosk.projectors.event_rows import event_row
from aosk.projectors.memory import MemoryOp, memory_ops, op_hashes
from aosk.projectors.rows import (
    EPOCH,
    GENESIS,
    agent_row,
    audit_row,
    checkpoint_row,
    count_verdict,
    link,
    ms_of,
    ts,
    verdict_bytes,
)
from aosk.projectors.task_rows import TaskRow, task_rows

__all__ = ["AgentEntry", "FoldedRecord", "PartitionStop", "FoldedBatch", "fold_batch", "Inconsistent", "stop_code",
           "stop_message"]

log = logging.getLogger("aosk.projector")

_MEMORY_TYPES: Final = frozenset({"MemoryStored", "MemoryEmbedded", "MemoryForgotten"})


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """What a projector keeps per agent key between batches."""

    slot: AgentSlot
    head: bytes
    """The agent's audit chain head (hash of its last audit row)."""
    counts: tuple[int, int, int]
    """Verdicts so far: accepted, rejected, duplicates."""
    partition: int
    updated_ms: int
    """LogAppendTime of the last record applied."""

    @classmethod
    def from_stored(cls, state: bytes, last_offset: int, head: bytes, counts: tuple[int, int, int],
                    partition: int, updated_at: Any) -> AgentEntry:
        """The entry an ``agent_state`` row holds (raises ``StateDecodeError``)."""
        return cls(AgentSlot(decode_state(bytes(state)), last_offset, ()), bytes(head), counts, partition,
                   ms_of(updated_at))

    def row(self) -> tuple[Any, ...]:
        st = self.slot.state
        return agent_row(
            st, partition=self.partition, last_offset=self.slot.last_offset, state_bytes=encode_state(st),
            state_hash=state_hash(st), audit_head=self.head, counts=self.counts, updated_ms=self.updated_ms,
        )


@dataclass(slots=True)
class FoldedRecord:
    """Everything one record leads to in the projection."""

    partition: int
    offset: int
    key: str
    entry: AgentEntry
    """The agent's entry after the record (its agent_state row, if this is its last)."""
    audit: tuple[Any, ...]
    verdict_bytes: bytes
    checkpoint: tuple[Any, ...] | None
    memory: tuple[MemoryOp, ...]
    event: tuple[Any, ...] = ()
    """Its ``events`` row (``aosk.projectors.event_rows``)."""
    tasks: tuple[TaskRow, ...] = ()
    """Its ``tasks`` rows (``aosk.projectors.task_rows``): only an accepted record that
    changed the agent's tasks has any."""


@dataclass(frozen=True)
class PartitionStop:
    partition: int
    offset: int
    reason: str
    """What happened and what to do, for people."""
    code: str = "error"
    """``stop_code``: ``unknown_fingerprint`` | ``unknown_fold_version`` | ``moved_key`` | ``error``."""


def stop_code(error: BaseException) -> str:
    """The stop reason code for ``error`` (the same codes as the worker's stops)."""
    if isinstance(error, UnknownFingerprint):
        return "unknown_fingerprint"
    if isinstance(error, UnknownFoldVersion):
        return "unknown_fold_version"
    if isinstance(error, PartitionCountChanged):
        return "partition_count_changed"
    return "error"


def stop_message(offset: int, error: BaseException) -> str:
    """What the stop at ``offset`` means and what to do about it."""
    if isinstance(error, UnknownFingerprint):
        return (f"record at offset {offset} has unknown schema fingerprint {error.fingerprint.hex()}; deploy the "
                "newer schemas and restart, or if the record is garbage release the partition with "
                "`aosk journal quarantine PARTITION:OFFSET --reason TEXT` (docs/recovery.md)")
    return f"{type(error).__name__}: {error}"


@dataclass
class FoldedBatch:
    outcomes: list[FoldedRecord] = field(default_factory=list)
    ends: dict[int, tuple[int, int]] = field(default_factory=dict)
    """partition -> (next offset after the batch, LogAppendTime of its last record)."""
    entries: dict[str, AgentEntry] = field(default_factory=dict)
    """The overlay: every agent entry the batch changed, by key."""
    stops: list[PartitionStop] = field(default_factory=list)


_sha256 = hashlib.sha256


def fold_batch(
    partitions: Mapping[int, Iterable[Record]],
    get_entry: Callable[[str], AgentEntry | None],
    *,
    checkpoint_every: int,
    owner_of: Callable[[str], int | None] | None = None,
    live_partitions: int | None = None,
    quarantines: Quarantines | None = None,
) -> FoldedBatch:
    """Fold each partition's records (offset order) on top of ``get_entry`` (the cache).

    Each record folds into the key ``aosk.kernel.fold_key`` names (the rule every reader
    shares): from fold version 2 on, a keyed record off its key's murmur2 partition goes
    to the partition's pseudo-agent, rejected ``wrong_partition``.

    ``owner_of(key)`` tells which partition a cached or stored key lives on (None:
    unknown); a key seen on a second partition stops that partition (under version 1).

    ``live_partitions`` is the journal's partition count now; if a partition's marker
    recorded another, ``PartitionCountChanged`` is raised (never caught here: the whole
    batch stops, loudly).

    ``quarantines`` resolves records with an unknown fingerprint (None: they stop).
    """
    out = FoldedBatch()
    overlay = out.entries
    outcomes = out.outcomes
    sha256 = _sha256
    at_ms: int | None = None
    at = EPOCH
    for p, records in partitions.items():
        pkey = pseudo_key(p)
        pe = _entry(overlay, get_entry, pkey)
        pstate = None if pe is None else pe.slot.state
        if live_partitions is not None:
            check_partition_count(pstate, live_partitions)
        version, partition_count = fold_args(pstate)
        last: tuple[int, int] | None = None
        for rec in records:
            key = rec.key
            if key is None:
                key = pkey
            elif partition_count:
                key = route(rec, version, partition_count).key
            # the overlay, then the cache (inline: this runs once per record)
            e = overlay.get(key)
            if e is None:
                e = get_entry(key)
            if e is not None and e.partition != p:
                out.stops.append(PartitionStop(p, rec.offset, _moved(key, e.partition, p), "moved_key"))
                break
            if e is None and owner_of is not None:
                other = owner_of(key)
                if other is not None and other != p:
                    out.stops.append(PartitionStop(p, rec.offset, _moved(key, other, p), "moved_key"))
                    break
            if rec.error is not None and quarantines is not None:
                rec = quarantines.resolve(rec)
            try:
                slot, v = apply(None if e is None else e.slot, rec, version=version, partitions=partition_count,
                                hash_state=False)
            except Exception as exc:  # UnknownFingerprint, UnknownFoldVersion, or a fold bug
                out.stops.append(PartitionStop(p, rec.offset, stop_message(rec.offset, exc), stop_code(exc)))
                break
            seq = v.seq
            if seq == 0:
                raise Inconsistent(f"offset {rec.offset} of partition {p} was already applied to {key} "
                                   f"(last applied offset {e.slot.last_offset if e else '?'})")
            st = slot.state
            if key == pkey:  # a marker may switch the partition's rules
                version, partition_count = fold_args(st)
                if live_partitions is not None:
                    check_partition_count(st, live_partitions)
            vb = verdict_bytes(v)
            vh = sha256(rec.value).digest()
            kind = v.kind
            if e is None:
                head = link(GENESIS, seq, vh, vb)
                ne = AgentEntry(slot, head, count_verdict((0, 0, 0), kind), p, rec.timestamp)
                prev_status: str = Status.NONE
                prev_tasks = EMPTY_TASKS
            else:
                head = link(e.head, seq, vh, vb)
                ne = AgentEntry(slot, head, count_verdict(e.counts, kind), p, rec.timestamp)
                prev_status = e.slot.state.status
                prev_tasks = e.slot.state.tasks
            overlay[key] = ne
            if v.timestamp != at_ms:  # runs of records share a LogAppendTime: one datetime each
                at_ms = v.timestamp
                at = ts(at_ms)
            ident = st.identity
            tenant_id = None if ident is None else ident.tenant_id
            ev = rec.event
            reason = checkpoint_reason(prev_status, v, checkpoint_every)
            mem: tuple[MemoryOp, ...] = ()
            if v.paged_out or (kind == "accepted" and v.event_type in _MEMORY_TYPES):
                mem = memory_ops(v, ev, tenant_id, at=at)
            sh: bytes | None = None
            cp: tuple[Any, ...] | None = None
            if reason is not None:  # the checkpoint's audit row records its state hash too
                sh = state_hash(st)
                cp = checkpoint_row(v, reason, encode_state(st), sh)
            audit = audit_row(v, value_hash=vh, chain_hash=head, verdict_bytes=vb, tenant_id=tenant_id, event=ev,
                              recorded_at=at, state_hash=sh, checkpoint=reason,
                              memory_hashes=op_hashes(mem) if mem else None)
            task_changes: tuple[TaskRow, ...] = ()
            if st.tasks is not prev_tasks and kind == "accepted":
                task_changes = task_rows(prev_tasks, st, ev, partition=p, offset=rec.offset, at=at)
            outcomes.append(FoldedRecord(p, rec.offset, key, ne, audit, vb, cp, mem, event_row(audit, ev, rec.error),
                                         task_changes))
            last = (rec.offset + 1, rec.timestamp)
        if last is not None:
            out.ends[p] = last
    return out


def _entry(overlay: Mapping[str, AgentEntry], get_entry: Callable[[str], AgentEntry | None],
           key: str) -> AgentEntry | None:
    e = overlay.get(key)
    return e if e is not None else get_entry(key)


def _moved(key: str, have: int, got: int) -> str:
    return (f"agent key {key!r} lives on partition {have} but a record for it is on partition {got}: "
            "a producer does not use the murmur2 partitioner, or the journal's partition count changed; "
            "from fold version 2 on (aosk kernel upgrade --to-version 3, the latest) such records are rejected "
            "wrong_partition instead (docs/recovery.md)")


def last_entries(outcomes: Iterable[FoldedRecord]) -> dict[str, AgentEntry]:
    """Each key's entry after its last record among ``outcomes``."""
    return {o.key: o.entry for o in outcomes}
