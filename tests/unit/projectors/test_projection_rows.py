"""The pure half of the projectors: chain links, rows, checkpoints policy, memory
changes, and that how a journal is cut into batches never changes a row."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aosk.events import (
    AgentResumed,
    AgentSpawned,
    AgentStarted,
    AgentSuspended,
    Budgets,
    CheckpointRequested,
    ContextAppended,
    MemoryEmbedded,
    MemoryForgotten,
    MemoryStored,
    encode,
)
from aosk.journal import record_from_message
from aosk.kernel import Record, canonical_verdict_bytes, fold_with_verdicts
from aosk.projectors.batch import fold_batch
from aosk.projectors.checkpoints import checkpoint_reason
from aosk.projectors.memory import MemoryChanges
from aosk.projectors.rows import (
    AGENT_COLUMNS,
    AGENT_TYPES,
    AUDIT_COLUMNS,
    AUDIT_TYPES,
    CHECKPOINT_COLUMNS,
    CHECKPOINT_TYPES,
    GENESIS,
    MEMORY_COLUMNS,
    link,
    memory_hash,
    memory_types,
    ms_of,
    storage_key,
    ts,
)
from aosk.reads.audit import verdict_from_row
from aosk.workload import RawRecord, generate_workload

BIG = Budgets(max_tokens=10**9, max_tool_calls=10**6, max_steps=10**6, context_window_tokens=300)


class _Msg:
    def __init__(self, key: bytes | None, value: bytes, partition: int, offset: int, ts_ms: int) -> None:
        self._k, self._v, self._p, self._o, self._t = key, value, partition, offset, ts_ms

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes:
        return self._v

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (2, self._t)


def journal(items: list[Any], partitions: int = 3) -> list[Record]:
    """Records as a consumer would see them (encoded, keyed, positioned)."""
    offsets = [0] * partitions
    out = []
    for i, it in enumerate(items):
        key = it.key if isinstance(it, RawRecord) else it.agent_id
        value = it.value if isinstance(it, RawRecord) else encode(it)
        p = sum(key.encode()) % partitions
        out.append(record_from_message(_Msg(key.encode(), value, p, offsets[p], 1_700_000_000_000 + i)))
        offsets[p] += 1
    return sorted(out, key=lambda r: (r.partition, r.offset))


def _h(**kw: Any) -> dict[str, Any]:
    kw.setdefault("event_id", str(uuid.uuid4()))
    return dict(tenant_id="t1", occurred_at=1, origin="client", **kw)


def memory_items() -> list[Any]:
    """Memory stores, embeddings, forgets, paging, suspends and requested checkpoints."""
    emb = tuple(float(i % 7) / 7 + 0.01 for i in range(384))
    items: list[Any] = []
    for a in ("m-1", "m-2"):
        items += [
            AgentSpawned(**_h(agent_id=a), parent_id=None, name=a, priority=5, capabilities=(), budgets=BIG,
                         metadata={}),
            AgentStarted(**_h(agent_id=a)),
            MemoryStored(**_h(agent_id=a), memory_id="x", text="first", embedding=None, importance=0.5,
                         metadata={"k": "v"}),
            MemoryEmbedded(**_h(agent_id=a), memory_id="x", embedding=emb),
            MemoryStored(**_h(agent_id=a), memory_id="y", text="second", embedding=emb, importance=0.1, metadata={}),
            MemoryForgotten(**_h(agent_id=a), memory_id="y"),
            MemoryEmbedded(**_h(agent_id=a), memory_id="y", embedding=emb),  # after forgetting: nothing
            MemoryEmbedded(**_h(agent_id=a), memory_id="never", embedding=emb),
            CheckpointRequested(**_h(agent_id=a)),
        ]
        for i in range(12):  # 12 x 40 tokens through a 300-token window: pages out
            items.append(ContextAppended(**_h(agent_id=a), entry_id=f"e{i}", role="user", content=f"c{i}",
                                         tokens=40, importance=0.3))
        items += [
            AgentSuspended(**_h(agent_id=a), reason="operator"),
            AgentResumed(**_h(agent_id=a)),
            AgentStarted(**_h(agent_id=a)),
            MemoryStored(**_h(agent_id=a), memory_id="x", text="replaced", embedding=None, importance=0.9,
                         metadata={}),
        ]
    return items


def mixed_journal(events: int) -> list[Record]:
    """A realistic workload followed by the memory scenario, on one journal."""
    w = generate_workload(agents=12, events=events, seed=5, garbage_every=97)
    return journal([*w.items, *memory_items()])


def _batches(records: list[Record], cuts: list[int]) -> list[dict[int, list[Record]]]:
    out = []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(records))), len(records)]
    for a, b in pairwise(bounds):
        parts: dict[int, list[Record]] = {}
        for r in records[a:b]:
            parts.setdefault(r.partition, []).append(r)
        out.append(parts)
    return out


def _fold_in_batches(records: list[Record], cuts: list[int]) -> tuple[list[Any], list[Any], MemoryTable, dict]:
    cache: dict[str, Any] = {}
    audit, cps = [], []
    table = MemoryTable()
    for parts in _batches(records, cuts):
        b = fold_batch(parts, cache.get, checkpoint_every=100)
        audit += [o.audit for o in b.outcomes]
        cps += [o.checkpoint for o in b.outcomes if o.checkpoint]
        mem = MemoryChanges()
        for o in b.outcomes:
            mem.add(o.memory)
        table.apply(mem)
        cache.update(b.entries)
    agents = {k: e.row() for k, e in cache.items()}
    return sorted(audit, key=lambda r: (r[0], r[1])), sorted(cps, key=lambda r: (r[0], r[1])), table, agents


class MemoryTable:
    """What the writer does with MemoryChanges, on a dict: upsert full rows, patch rows
    that exist (embedding only if not forgotten)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[Any]] = {}

    def apply(self, mem: MemoryChanges) -> None:
        i = {n: k for k, n in enumerate(MEMORY_COLUMNS)}
        for key, row in mem.full.items():
            self.rows[key] = list(row)
        for key, (emb, at, off, gone_at, gone_off, gone_hash) in mem.patches.items():
            row = self.rows.get(key)
            if row is None:
                continue
            if gone_at is not None:
                row[i["text"]], row[i["metadata"]], row[i["embedding"]] = None, {}, None
                row[i["embedded_at"]], row[i["embedded_offset"]] = None, None
                row[i["forgotten"]], row[i["forgotten_at"]], row[i["forgotten_offset"]] = True, gone_at, gone_off
                row[i["content_hash"]] = gone_hash
            elif emb is not None and not row[i["forgotten"]]:
                row[i["embedding"]], row[i["embedded_at"]], row[i["embedded_offset"]] = emb, at, off


# --- chain and rows ------------------------------------------------------------------------


def test_link_is_the_documented_formula() -> None:
    prev, vh, vb = b"\1" * 32, hashlib.sha256(b"value").digest(), b'{"kind":"accepted"}'
    want = hashlib.sha256(prev + (7).to_bytes(8, "big") + vh + vb).digest()
    assert link(prev, 7, vh, vb) == want
    assert GENESIS == bytes(32)


def test_timestamps_round_trip_exactly() -> None:
    for ms in (0, 1, 1_700_000_000_123, 4_102_444_800_999):
        assert ms_of(ts(ms)) == ms


def test_storage_key_keeps_ordinary_keys_and_maps_unstorable_ones() -> None:
    assert storage_key("agent-0001") == "agent-0001"
    assert storage_key("ü" * 200) == "ü" * 200
    for bad in ("a\x00b", "x" * 600, "\udcff"):
        k = storage_key(bad)
        assert k.startswith("~h:") and len(k) == 67
    assert storage_key("a\x00b") != storage_key("a\x00c")


def test_column_lists_match_copy_types() -> None:
    assert len(AUDIT_COLUMNS) == len(AUDIT_TYPES)
    assert len(AGENT_COLUMNS) == len(AGENT_TYPES)
    assert len(CHECKPOINT_COLUMNS) == len(CHECKPOINT_TYPES)
    assert len(MEMORY_COLUMNS) == len(memory_types(0))


def test_audit_rows_rebuild_the_canonical_verdict() -> None:
    """What verify recomputes from the columns is exactly what the chain hashed."""
    records = mixed_journal(800)
    _, verdicts = fold_with_verdicts(records)
    cache: dict[str, Any] = {}
    parts: dict[int, list[Record]] = {}
    for r in records:
        parts.setdefault(r.partition, []).append(r)
    batch = fold_batch(parts, cache.get, checkpoint_every=100)
    by_pos = {(v.partition, v.offset): v for v in verdicts}
    for o in batch.outcomes:
        row = dict(zip(AUDIT_COLUMNS, o.audit, strict=True))
        v = by_pos[(o.partition, o.offset)]
        assert canonical_verdict_bytes(verdict_from_row(row)) == canonical_verdict_bytes(v) == o.verdict_bytes
        assert row["verdict_bytes"] is None


def test_checkpoint_policy_equals_the_folds_flag_at_its_interval() -> None:
    records = mixed_journal(3000)
    slots: dict[str, Any] = {}
    from aosk.kernel import apply, partition_version

    reasons = set()
    for r in records:
        prev = slots.get(r.agent_key)
        slot, v = apply(prev, r, version=partition_version(slots, r.partition))
        slots[r.agent_key] = slot
        reason = checkpoint_reason(prev.state.status if prev else "NONE", v, 100)
        assert (reason is not None) == v.checkpoint_due, (r.partition, r.offset, v)
        reasons.add(reason)
    assert {"interval", "requested", "suspended", "final"} <= reasons


# --- batching never changes a row ----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=12))
def test_any_batching_gives_the_same_rows(cuts: list[int]) -> None:
    records = _RECORDS
    one = _ONE_BATCH
    assert _fold_in_batches(records, cuts)[:2] == one[:2]
    many = _fold_in_batches(records, cuts)
    assert many[2].rows == one[2].rows
    assert many[3] == one[3]


_RECORDS = mixed_journal(300)
_ONE_BATCH = _fold_in_batches(_RECORDS, [])


def test_memory_rows_follow_the_journal() -> None:
    rows = _ONE_BATCH[2].rows
    i = {n: k for k, n in enumerate(MEMORY_COLUMNS)}
    x = rows[("m-1", "x")]
    assert x[i["text"]] == "replaced" and x[i["embedding"]] is None and not x[i["forgotten"]]
    y = rows[("m-1", "y")]
    assert y[i["forgotten"]] and y[i["text"]] is None and y[i["embedding"]] is None and y[i["metadata"]] == {}
    assert ("m-1", "never") not in rows
    paged = [k for k, r in rows.items() if k[0] == "m-1" and r[i["source"]] == "paged_out"]
    assert paged and all(rows[k][i["embedding"]] is None for k in paged)


@pytest.mark.parametrize("seed", range(5))
def test_memory_changes_merge_like_one_op_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    keys = [("a", f"m{i}") for i in range(4)]
    ops: list[tuple[Any, ...]] = []
    for n in range(60):
        k = rng.choice(keys)
        kind = rng.choice(("full", "embed", "forget"))
        if kind == "full":
            row = [None] * len(MEMORY_COLUMNS)
            row[MEMORY_COLUMNS.index("text")] = f"t{n}"
            row[MEMORY_COLUMNS.index("forgotten")] = False
            row[MEMORY_COLUMNS.index("metadata")] = {}
            ops.append(("full", k, row))
        elif kind == "embed":
            ops.append(("embed", k, f"v{n}", f"at{n}", n))
        else:
            ops.append(("forget", k, f"at{n}", n, f"h{n}".encode()))
    one_by_one = MemoryTable()
    for op in ops:
        m = MemoryChanges()
        m.add([op])
        one_by_one.apply(m)
    for size in (2, 7, 60):
        merged = MemoryTable()
        for j in range(0, len(ops), size):
            m = MemoryChanges()
            m.add(ops[j : j + size])
            merged.apply(m)
        assert merged.rows == one_by_one.rows


def test_the_fast_canonical_verdict_encoder_is_in_use() -> None:
    """rows.verdict_bytes is a hand-built canonical_verdict_bytes; if the kernel's format
    changes, the projector falls back to the kernel's encoder (and this test says so)."""
    from aosk.projectors import rows

    assert rows.verdict_bytes is rows._fast_verdict_bytes


# --- fold version 2: routing in batches --------------------------------------------------------


def _golden_v2() -> list[Record]:
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "unit" / "kernel"))
    from kernel_support import record_from_plain

    doc = json.loads((root / "golden" / "v2_wrong_partition.json").read_text())
    records = [record_from_plain(r) for r in doc["records"]]
    # Without the record misrouted before the markers: version 1 folds it into its key,
    # which a projector refuses (the key lives on another partition: it stops there).
    return [r for r in records if getattr(r.event, "entry_id", None) != "before"]


@pytest.mark.parametrize("cuts", [[], [1, 5, 9], list(range(1, 40))])
def test_fold_batch_routes_misrouted_records_like_the_fold(cuts: list[int]) -> None:
    records = sorted(_golden_v2(), key=lambda r: (r.partition, r.offset))
    _, verdicts = fold_with_verdicts(records)
    want = {(v.partition, v.offset): (v.agent_id, v.seq, v.kind, v.reason) for v in verdicts}
    cache: dict[str, Any] = {}
    got = {}
    for parts in _batches(records, cuts):
        b = fold_batch(parts, cache.get, checkpoint_every=100, live_partitions=3)
        assert not b.stops
        for o in b.outcomes:
            v = json.loads(o.verdict_bytes)  # the audit row's canonical verdict
            assert v["agent_id"] == o.key
            got[(o.partition, o.offset)] = (o.key, v["seq"], v["kind"], v["reason"])
        cache.update(b.entries)
    assert got == want
    assert sum(1 for a in want.values() if a[3] == "wrong_partition") >= 5


def test_fold_batch_stops_on_a_changed_partition_count() -> None:
    from aosk.errors import PartitionCountChanged

    records = sorted(_golden_v2(), key=lambda r: (r.partition, r.offset))
    cache: dict[str, Any] = {}
    with pytest.raises(PartitionCountChanged, match="recorded 3"):
        fold_batch({0: [r for r in records if r.partition == 0]}, cache.get, checkpoint_every=100,
                   live_partitions=4)


def test_memory_rows_carry_their_hash_and_their_audit_row_lists_it() -> None:
    """What audit verify recomputes: each memory row's content_hash is memory_hash of the
    row (a tombstone once forgotten), listed by the audit row of the record that last
    wrote it; checkpoint records name their checkpoint and its state hash."""
    audit, cps, table, _ = _ONE_BATCH
    by_pos = {(r[0], r[1]): dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in audit}
    i = {n: k for k, n in enumerate(MEMORY_COLUMNS)}
    forgotten = 0
    for row in table.rows.values():
        assert row[i["content_hash"]] == memory_hash(row) == memory_hash(dict(zip(MEMORY_COLUMNS, row, strict=True)))
        at = row[i["forgotten_offset"]] if row[i["forgotten"]] else row[i["journal_offset"]]
        assert row[i["content_hash"]] in by_pos[(row[i["journal_partition"]], at)]["memory_hashes"]
        forgotten += row[i["forgotten"]]
    assert forgotten and len(table.rows) > 20
    edited = list(next(iter(table.rows.values())))
    edited[i["tenant_id"]] = "another"
    assert memory_hash(edited) != edited[i["content_hash"]]
    for cp in cps:
        r = dict(zip(CHECKPOINT_COLUMNS, cp, strict=True))
        a = next(x for x in by_pos.values() if (x["agent_id"], x["seq"]) == (r["agent_id"], r["seq"]))
        assert (a["checkpoint"], a["state_hash"]) == (r["reason"], r["state_hash"])
    assert {a["checkpoint"] is not None for a in by_pos.values()} == {True, False}
    assert all((a["state_hash"] is None) == (a["checkpoint"] is None) for a in by_pos.values())
