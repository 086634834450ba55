"""The agent states a projector keeps between batches (``aosk project`` and ``aosk replay``).

``fold_batch`` folds on top of ``AgentCache.get``; the states it does not find are read
from ``agent_state`` first (``wanted`` then ``load``: one query per batch), and those
known to have no row are remembered so a new agent costs one look, not one per batch.
``committed`` takes the entries of a written batch. The cache never holds anything the
database does not: it is filled from rows read or rows committed, so dropping any part
of it (``drop``: a revoked or re-read partition) only costs a read.

``complete``: every row of the schema is in the cache (a rebuild from offset 0 that
wrote all of them itself), so a miss is a new agent and nothing is read.
``max_entries``: the least recently written entries beyond it are evicted (None: keep
all; the rebuild's entries are bounded by the journal's agents anyway).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import psycopg

from aosk.kernel import AgentSlot, Record, pseudo_key
from aosk.projectors.batch import AgentEntry, FoldedBatch
from aosk.projectors.rows import storage_key
from aosk.projectors.stored import read_stored_entries

__all__ = ["AgentCache"]


class AgentCache:
    """Agent key -> ``AgentEntry``, indexed by the partition each entry lives on."""

    def __init__(self, *, max_entries: int | None = None, complete: bool = False) -> None:
        self.max_entries = max_entries
        self.complete = complete
        self._entries: dict[str, AgentEntry] = {}
        """In order of last write: least recently written first."""
        self._keys: dict[int, set[str]] = {}
        self._absent: dict[int, set[str]] = {}
        """Keys known to have no stored row, per partition they appeared on (the
        partitions' pseudo-agents, mostly)."""
        self.get: Callable[[str], AgentEntry | None] = self._entries.get
        """The cached entry of a key (None: not cached); ``fold_batch``'s ``get_entry``."""

    def __len__(self) -> int:
        return len(self._entries)

    def wanted(self, parts: Mapping[int, list[Record]]) -> dict[str, tuple[str, int]]:
        """The batch's keys (and its partitions' pseudo-agents) neither cached nor known
        absent: storage key -> (key, the partition it appears on)."""
        if self.complete:
            return {}
        want: dict[str, tuple[str, int]] = {}
        entries = self._entries
        for p, recs in parts.items():
            pkey = pseudo_key(p)
            absent = self._absent.get(p, ())
            for key in {pkey if r.key is None else r.key for r in recs} | {pkey}:
                if key not in entries and key not in absent:
                    want[storage_key(key)] = (key, p)
        return want

    def load(self, conn: psycopg.Connection[Any], schema: str, want: Mapping[str, tuple[str, int]]) -> dict[str, int]:
        """Read ``want`` (from ``wanted``) from ``schema`` into the cache; returns the keys
        stored under another partition than the one they now appear on. Raises
        ``UndecodableState`` for a stored state that does not decode."""
        stored = read_stored_entries(conn, schema, want)
        for key, p in stored.absent:
            self._absent.setdefault(p, set()).add(key)
        for key, entry in stored.found.items():
            self._entries[key] = entry
            self._keys.setdefault(entry.partition, set()).add(key)
        return stored.moved

    def committed(self, batch: FoldedBatch) -> None:
        """Take the entries of a batch whose rows are committed."""
        entries = self._entries
        for key, e in batch.entries.items():
            slot = e.slot
            if slot.recent:  # a projector never sees a redelivery: keep the cache lean
                e = replace(e, slot=AgentSlot(slot.state, slot.last_offset, ()))
            entries.pop(key, None)  # re-inserted last: dict order is least recently written first
            entries[key] = e
            self._keys.setdefault(e.partition, set()).add(key)
            absent = self._absent.get(e.partition)
            if absent:
                absent.discard(key)
        if self.max_entries is None:
            return
        excess = len(entries) - self.max_entries
        if excess > 0:
            for key in list(itertools.islice(entries, excess)):
                e = entries.pop(key)
                self._keys.get(e.partition, set()).discard(key)

    def drop(self, partition: int) -> None:
        """Forget what is cached of ``partition`` (it is read again when needed)."""
        for key in self._keys.pop(partition, ()):
            self._entries.pop(key, None)
        self._absent.pop(partition, None)

    def forget_absent(self) -> None:
        """Forget which keys have no row (other processes wrote into the schema) and stop
        treating a miss as a new agent."""
        self._absent.clear()
        self.complete = False
