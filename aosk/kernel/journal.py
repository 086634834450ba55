"""Folding many records: the plain loop every caller (tests, CLI, projectors) can share.

The fold version in force on a partition is the ``fold_version`` of that partition's
pseudo-agent ``~p<partition>``, which ``KernelUpgraded`` markers (produced without a
key) switch. ``fold_journal`` passes it to ``apply`` for every record; a worker or
projector folding one record at a time does the same with ``partition_version``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

from aosk.kernel.fold import apply
from aosk.kernel.params import INITIAL_VERSION
from aosk.kernel.slot import AgentSlot
from aosk.kernel.verdict import Record, Verdict, pseudo_key

__all__ = ["fold_journal", "fold_with_verdicts", "partition_version"]


def partition_version(slots: Mapping[str, AgentSlot], partition: int) -> int:
    """The fold version in force on ``partition`` given the slots folded so far."""
    s = slots.get(pseudo_key(partition))
    return INITIAL_VERSION if s is None else s.state.fold_version


def fold_with_verdicts(
    records: Iterable[Record], slots: MutableMapping[str, AgentSlot] | None = None, *, hash_state: bool = True
) -> tuple[dict[str, AgentSlot], list[Verdict]]:
    """Fold ``records`` (journal order per partition) into ``slots`` (a new dict if None);
    returns the slots by key and every verdict in order (``hash_state`` as in ``apply``)."""
    out: dict[str, AgentSlot] = dict(slots) if slots is not None else {}
    verdicts: list[Verdict] = []
    versions: dict[int, int] = {}
    for r in records:
        p = r.partition
        v = versions.get(p)
        if v is None:
            v = partition_version(out, p)
        if r.key is not None:
            key = r.key
            slot, verdict = apply(out.get(key), r, version=v, hash_state=hash_state)
        else:  # a partition marker: it may switch the partition's version
            key = pseudo_key(p)
            slot, verdict = apply(out.get(key), r, version=v, hash_state=hash_state)
            versions[p] = slot.state.fold_version
        out[key] = slot
        verdicts.append(verdict)
    return out, verdicts


def fold_journal(records: Iterable[Record], slots: MutableMapping[str, AgentSlot] | None = None) -> dict[str, AgentSlot]:
    """Fold ``records`` and return the slot of every key (``slot.state`` is the state)."""
    return fold_with_verdicts(records, slots, hash_state=False)[0]
