"""The worker's agent slots over a faust table of bytes, with a decode cache.

The table (``bytes`` key -> ``encode_slot`` bytes) is what faust restores from its
changelog after a rebalance. Writes go to the table's store and come back as a
changelog ``Output`` that the app produces itself, awaited like every other output:
faust's own table writes go through its ``ProducerBuffer``, whose ``flush()`` gives up
after 0.1 s without a sent message (faust-streaming 0.15.3,
``ProducerBuffer.flush_atmost``), so an offset commit could overtake changelog records
still in that buffer and a SIGKILL then lose table updates for committed records (the
fault test caught exactly that). Sent directly, they sit in aiokafka's accumulator,
which the flush before every commit really drains.

Decoding a slot on every record would cost more than folding it, so decoded slots are
cached. A cache entry is valid only while
the table still holds the very bytes object it was made from (an identity check):
anything that replaced the value (recovery from the changelog, another generation)
makes the cache decode again, so the cache can never serve a stale slot.

Keys: agent ids (UTF-8), ``~p<partition>`` for records without a key (the pseudo-agent
whose ``fold_version`` is the version in force on that partition), and
``~fork/<request event id>`` for ``AgentForked`` events not yet known to be produced
(``streams.forks``).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Final

from aosk.kernel import INITIAL_VERSION, AgentSlot, decode_slot, encode_slot, pseudo_key
from aosk.partitioning import partition_for
from aosk.streams.records import Output, Sink

__all__ = ["SlotStore", "partition_of_key", "FORK_PREFIX"]

FORK_PREFIX: Final = "~fork/"


def partition_of_key(key: str, partitions: int) -> int | None:
    """The journal partition whose records fold into ``key`` (None for bookkeeping keys)."""
    if key.startswith("~"):
        if key.startswith("~p") and key[2:].isdigit():
            return int(key[2:])
        return None
    return partition_for(key.encode(), partitions)


class SlotStore:
    """``AgentSlot`` by agent key over a ``MutableMapping[bytes, bytes]`` (the table)."""

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self._table = table
        self._cache: dict[str, tuple[bytes, AgentSlot]] = {}

    def get(self, key: str) -> AgentSlot | None:
        raw = self._table.get(key.encode())
        if raw is None:
            return None
        hit = self._cache.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]
        slot = decode_slot(raw)
        self._cache[key] = (raw, slot)
        return slot

    def put(self, key: str, slot: AgentSlot, *, partition: int) -> Output:
        """Store ``slot``; returns the changelog record to produce (to ``partition``, the
        journal partition the key lives on)."""
        raw = encode_slot(slot)
        k = key.encode()
        self._table[k] = raw
        self._cache[key] = (raw, slot)
        return Output(Sink.CHANGELOG, k, partition, raw)

    def version(self, partition: int) -> int:
        """The fold version in force on ``partition`` (its pseudo-agent's)."""
        s = self.get(pseudo_key(partition))
        return INITIAL_VERSION if s is None else s.state.fold_version

    def get_raw(self, key: str) -> bytes | None:
        return self._table.get(key.encode())

    def put_raw(self, key: str, value: bytes, *, partition: int) -> Output:
        k = key.encode()
        self._table[k] = value
        return Output(Sink.CHANGELOG, k, partition, value)

    def keys(self) -> Iterator[str]:
        for k in list(self._table.keys()):
            yield k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)

    def forget(self, keys: set[str] | None = None) -> None:
        """Drop cached decodes (all, or of ``keys``); the table is untouched."""
        if keys is None:
            self._cache.clear()
        else:
            for k in keys:
                self._cache.pop(k, None)
