"""The worker's snapshot topic: what recovery needs, not a history.

The fold is deterministic, so a worker that takes over a partition does not need every
state the previous owner went through: an older state of each agent plus the journal
after it gives exactly the same states again. The snapshot topic
(``kafka.worker_snapshots_topic``: ``<topic prefix>-worker-snapshots``, compacted, one partition per journal partition)
holds, per journal partition ``p``:

* per agent key folded on ``p``: ``encode_slot`` of its state and the offset of the last
  record folded into it (the slot's kept verdicts are empty: nothing is answered from
  them, see below);
* one floor marker, key ``~floor/<p>``: the journal offset ``F`` from which re-folding
  ``p`` rebuilds every agent whose latest snapshot is older than its last record.

Invariant (what makes recovery exact): every snapshot and marker is produced AFTER the
consumer offsets covering its records were committed, so a snapshot never runs ahead of
the committed offset ``C``, and ``F <= C``. A new owner loads the latest snapshots and
the marker, re-folds ``[F, C)`` silently (a record at or below its agent's snapshot
offset is skipped), then folds from ``C`` on with outputs. Records at or after ``C`` may
have been judged before a crash; they are judged again from the same state and give
byte-identical verdicts and derived events (the fold is deterministic), so kept verdicts
are not needed to answer them.

When a snapshot is written (``SnapshotPolicy``): at most once per commit for an agent,
and only once it has ``every_records`` records past its last snapshot or its oldest
unsnapshotted record was folded ``every_s`` seconds ago; everything dirty on revocation
and on a clean stop. The floor then bounds how much a takeover re-folds (about
``every_s`` seconds of the partition's records) while the topic receives a small
fraction of the journal's bytes.

Pure bookkeeping and encoding: no Kafka here (``streams.kafka`` reads and writes).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from aosk.kernel import AgentSlot, decode_slot, encode_slot

__all__ = ["SnapshotPolicy", "DirtyAgents", "Restored", "restore", "floor_key",
           "encode_floor", "decode_floor", "encode_snapshot"]

FLOOR_PREFIX: Final = "~floor/"
_FLOOR: Final = struct.Struct(">4sq")
_FLOOR_MAGIC: Final = b"AKF1"


def floor_key(partition: int) -> bytes:
    return f"{FLOOR_PREFIX}{partition}".encode()


def encode_floor(offset: int) -> bytes:
    return _FLOOR.pack(_FLOOR_MAGIC, offset)


def decode_floor(value: bytes) -> int:
    magic, offset = _FLOOR.unpack(value)
    if magic != _FLOOR_MAGIC:
        raise ValueError(f"not a floor marker: magic {magic!r}")
    return int(offset)


def encode_snapshot(slot: AgentSlot) -> bytes:
    """A slot as stored in the snapshot topic (its kept verdicts dropped)."""
    return encode_slot(slot if not slot.recent else AgentSlot(slot.state, slot.last_offset))


@dataclass(frozen=True, kw_only=True)
class SnapshotPolicy:
    """When an agent's snapshot is written (see the module doc)."""

    every_records: int = 256
    """Snapshot an agent once it has this many folded records past its last snapshot."""
    every_s: float = 10.0
    """... or once its oldest unsnapshotted record was folded this long ago. Bounds the
    journal time a takeover re-folds."""


@dataclass
class _Dirty:
    first_offset: int
    """Journal offset of the agent's oldest record not covered by a durable snapshot."""
    records: int
    since: float
    """Monotonic time that record was folded."""


@dataclass
class DirtyAgents:
    """Agents folded past their last snapshot, per journal partition."""

    policy: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    _by_partition: dict[int, dict[str, _Dirty]] = field(default_factory=dict)

    def folded(self, partition: int, key: str, offset: int, now: float) -> None:
        keys = self._by_partition.setdefault(partition, {})
        d = keys.get(key)
        if d is None:
            keys[key] = _Dirty(offset, 1, now)
        else:
            d.records += 1

    def due(self, partition: int, now: float, *, everything: bool = False) -> list[str]:
        """Keys of ``partition`` whose snapshot is due now (all dirty ones with ``everything``)."""
        keys = self._by_partition.get(partition)
        if not keys:
            return []
        if everything:
            return sorted(keys)
        p = self.policy
        return sorted(k for k, d in keys.items() if d.records >= p.every_records or now - d.since >= p.every_s)

    def written(self, partition: int, keys: Iterable[str]) -> None:
        """The snapshots of ``keys`` were handed to the producer (after the commit)."""
        dirty = self._by_partition.get(partition)
        if dirty:
            for k in keys:
                dirty.pop(k, None)

    def floor(self, partition: int, committed: int) -> int:
        """Where a takeover must start re-folding ``partition`` once the snapshots written
        so far are durable: the oldest unsnapshotted record, else ``committed``."""
        dirty = self._by_partition.get(partition)
        if not dirty:
            return committed
        return min(committed, min(d.first_offset for d in dirty.values()))

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._by_partition.pop(p, None)

    def count(self) -> int:
        return sum(len(v) for v in self._by_partition.values())


@dataclass(frozen=True)
class Restored:
    """What the snapshot topic held for one journal partition."""

    slots: dict[str, AgentSlot]
    floor: int | None
    """The floor marker's offset (None: no marker, re-fold from the beginning)."""
    undecodable: int = 0
    """Values that were not snapshots (skipped; their agents are re-folded from the floor)."""


def restore(partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> Restored:
    """The latest snapshot per key and the floor of ``partition`` from the snapshot
    topic's records (key, value) in offset order."""
    latest: dict[bytes, bytes] = {}
    for k, v in records:
        if k is None:
            continue
        if v is None:
            latest.pop(k, None)
        else:
            latest[k] = v
    floor: int | None = None
    slots: dict[str, AgentSlot] = {}
    bad = 0
    fk = floor_key(partition)
    for k, v in latest.items():
        if k == fk:
            try:
                floor = decode_floor(v)
            except (ValueError, struct.error):
                floor, bad = None, bad + 1
            continue
        if k.startswith(FLOOR_PREFIX.encode()):
            continue
        try:
            slots[k.decode("utf-8")] = decode_slot(v)
        except Exception:  # noqa: BLE001 - a value that is not a slot: re-folded from the floor instead
            bad += 1
    if bad:
        floor = None  # an agent without a readable snapshot: only a full re-fold is exact
    return Restored(slots, floor, bad)
