"""Folding many records: the plain loop every caller (tests, CLI, projectors) can share.

The fold version in force on a partition is the ``fold_version`` of that partition's
pseudo-agent ``~p<partition>``, which ``KernelUpgraded`` markers (produced without a
key) switch; from fold version 2 on the same state also holds the journal's partition
count, which decides where a keyed record folds (``fold_key``, ``aosk.kernel.routing``).
``fold_journal`` passes both to ``apply`` for every record; a worker or projector folding
one record at a time does the same:

    ps = partition_state(slots, rec.partition)      # or its own copy of ~p<partition>
    key = fold_key(rec, ps)
    slot, verdict = apply(slots.get(key), rec, **fold_args(ps)._asdict())
    slots[key] = slot
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

from aosk.kernel.fold import apply
from aosk.kernel.params import INITIAL_VERSION
from aosk.kernel.routing import check_partition_count, fold_args, fold_key, route
from aosk.kernel.slot import AgentSlot
from aosk.kernel.state import AgentState
from aosk.kernel.verdict import Record, Verdict, pseudo_key

__all__ = [
    "fold_journal",
    "fold_with_verdicts",
    "partition_version",
    "partition_state",
    "fold_key",
    "fold_args",
    "check_partition_count",
]


def partition_state(slots: Mapping[str, AgentSlot], partition: int) -> AgentState | None:
    """The state of ``partition``'s pseudo-agent ``~p<partition>`` among ``slots`` (None:
    nothing folded there yet): what ``fold_key`` and ``fold_args`` take."""
    s = slots.get(pseudo_key(partition))
    return None if s is None else s.state


def partition_version(slots: Mapping[str, AgentSlot], partition: int) -> int:
    """The fold version in force on ``partition`` given the slots folded so far."""
    s = slots.get(pseudo_key(partition))
    return INITIAL_VERSION if s is None else s.state.fold_version


def fold_with_verdicts(
    records: Iterable[Record], slots: MutableMapping[str, AgentSlot] | None = None, *, hash_state: bool = True,
    keep_verdicts: int = 0,
) -> tuple[dict[str, AgentSlot], list[Verdict]]:
    """Fold ``records`` (journal order per partition) into ``slots`` (a new dict if None);
    returns the slots by key and every verdict in order (``hash_state`` and
    ``keep_verdicts`` as in ``apply``). Each record goes to the key ``fold_key`` names."""
    out: dict[str, AgentSlot] = dict(slots) if slots is not None else {}
    verdicts: list[Verdict] = []
    rules: dict[int, tuple[int, int]] = {}  # partition -> (version, partitions) in force
    for r in records:
        p = r.partition
        rule = rules.get(p)
        if rule is None:
            rule = rules[p] = fold_args(partition_state(out, p))
        version, partitions = rule
        key = route(r, version, partitions).key
        slot, verdict = apply(out.get(key), r, version=version, partitions=partitions, hash_state=hash_state,
                              keep_verdicts=keep_verdicts)
        out[key] = slot
        if key[:1] == "~" and key == pseudo_key(p):  # a marker may switch the partition's rules
            rules[p] = fold_args(slot.state)
        verdicts.append(verdict)
    return out, verdicts


def fold_journal(
    records: Iterable[Record], slots: MutableMapping[str, AgentSlot] | None = None,
) -> dict[str, AgentSlot]:
    """Fold ``records`` and return the slot of every key (``slot.state`` is the state)."""
    return fold_with_verdicts(records, slots, hash_state=False)[0]
