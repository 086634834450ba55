"""What the projection tables must hold, computed from the journal alone.

The journal is read back from the broker and folded with the kernel's
``fold_with_verdicts``; the audit chain, the checkpoints (the fold's own
``checkpoint_due`` flag) and the memories are modelled here independently of
``aosk.projectors``, so a test compares the projectors' tables with a second opinion.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg

from aosk.journal import JournalReader, record_from_message
from aosk.kernel import (
    LATEST_VERSION,
    AgentSlot,
    Record,
    Status,
    Verdict,
    apply,
    canonical_verdict_bytes,
    encode_state,
    fold_args,
    fold_key,
    params_for,
    partition_state,
)

GENESIS = bytes(32)


def read_journal(bootstrap: str, topic: str) -> list[Record]:
    """Every record of the journal now, partition by partition in offset order."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    ends = end_offsets(bootstrap, topic)
    # A partition may end in a transaction marker, which read_committed never delivers as a
    # record: its end-of-partition event says it was read to the end.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"oracle-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed", "log_level": 3,
                  "enable.partition.eof": True})
    per: dict[int, list[Record]] = {p: [] for p in ends}
    todo = {p for p, end in ends.items() if end > 0}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        while todo:
            for m in c.consume(5000, timeout=0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(m.partition())
                        continue
                    raise RuntimeError(m.error().str())
                p = m.partition()
                if m.offset() < ends[p]:
                    per[p].append(record_from_message(m))
                if m.offset() + 1 >= ends[p]:
                    todo.discard(p)
    finally:
        c.close()
    return [r for p in sorted(per) for r in per[p]]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    with JournalReader(bootstrap, topic) as r:
        return {p: r.end_offset(p) for p in range(r.partitions())}


@dataclass
class Expected:
    verdicts: dict[tuple[int, int], Verdict] = field(default_factory=dict)
    hashes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    slots: dict[str, AgentSlot] = field(default_factory=dict)
    heads: dict[str, bytes] = field(default_factory=dict)
    checkpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)
    memories: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def expected_projection(records: list[Record], checkpoint_every: int | None = None) -> Expected:
    """``checkpoint_every``: the schema's interval (None: the fold's own, its
    ``checkpoint_due``); it must divide the fold's, whose due points it then adds to."""
    fold_every = params_for(LATEST_VERSION).checkpoint_interval
    every = checkpoint_every or fold_every
    assert fold_every % every == 0, f"the oracle models intervals that divide {fold_every}, not {every}"
    exp = Expected()
    running = exp.slots
    for rec in records:  # fold_with_verdicts, one record at a time (states are needed per seq)
        ps = partition_state(running, rec.partition)
        key = fold_key(rec, ps)
        slot, v = apply(running.get(key), rec, **fold_args(ps)._asdict())
        running[key] = slot
        pos = (rec.partition, rec.offset)
        exp.verdicts[pos] = v
        prev = exp.heads.get(key, GENESIS)
        h = hashlib.sha256(
            prev + v.seq.to_bytes(8, "big") + hashlib.sha256(rec.value).digest() + canonical_verdict_bytes(v)
        ).digest()
        exp.hashes[pos] = h
        exp.heads[key] = h
        if v.checkpoint_due or (v.status != Status.NONE and v.seq % every == 0):
            exp.checkpoints[(key, v.seq)] = encode_state(slot.state)
        _memories(exp.memories, rec, v, slot)
    return exp


def _memories(mem: dict[tuple[str, str], dict[str, Any]], rec: Record, v: Verdict, slot: AgentSlot) -> None:
    if v.kind != "accepted":
        return
    ev = rec.event
    ident = slot.state.identity
    if ident is None:
        return
    agent = v.agent_id
    if v.event_type == "MemoryStored":
        mem[(agent, ev.memory_id)] = {
            "tenant_id": ident.tenant_id, "source": "stored", "text": ev.text, "metadata": dict(ev.metadata),
            "embedding": None if ev.embedding is None else [float(x) for x in ev.embedding],
            "forgotten": False, "journal_offset": rec.offset,
        }
    elif v.event_type == "MemoryEmbedded":
        m = mem.get((agent, ev.memory_id))
        if m is not None and not m["forgotten"]:
            m["embedding"] = [float(x) for x in ev.embedding]
    elif v.event_type == "MemoryForgotten":
        m = mem.get((agent, ev.memory_id))
        if m is not None:
            m.update(text=None, metadata={}, embedding=None, forgotten=True)
    for e in v.paged_out:
        mem[(agent, e.entry_id)] = {
            "tenant_id": ident.tenant_id, "source": "paged_out", "text": e.content, "metadata": {"tokens": e.tokens},
            "embedding": None, "forgotten": False, "journal_offset": rec.offset,
        }


def assert_projection_matches(dsn: str, schema: str, records: list[Record]) -> Expected:
    """Every table of ``schema`` equals what the journal folds into."""
    from aosk.projectors.runner import checkpoint_every_of

    with psycopg.connect(dsn) as conn:
        every = checkpoint_every_of(conn, schema)
        conn.commit()
    exp = expected_projection(records, every)
    with psycopg.connect(dsn) as conn:
        # audit_log: exactly one row per journal record, with the fold's verdict and chain
        rows = conn.execute(
            f"select journal_partition, journal_offset, agent_id, seq, kind, reason, hash, refused"
            f" from {schema}.audit_log"
        ).fetchall()
        got = {(p, o): r for p, o, *r in rows}
        assert len(rows) == len(got)
        missing = sorted(set(exp.verdicts) - set(got))
        extra = sorted(set(got) - set(exp.verdicts))
        assert not missing and not extra, f"audit rows missing {missing[:5]} / extra {extra[:5]}"
        for pos, (agent, seq, kind, reason, h, refused) in got.items():
            v = exp.verdicts[pos]
            assert (agent, seq, kind, reason) == (v.agent_id, v.seq, v.kind, v.reason), pos
            assert bytes(h) == exp.hashes[pos], f"chain hash differs at {pos}"
            assert not refused, pos
        # agent_state: the fold's state, byte for byte, and the chain head
        states = {
            a: (bytes(st), seq, lo, bytes(head), bytes(sh))
            for a, st, seq, lo, head, sh in conn.execute(
                f"select agent_id, state, seq, last_offset, audit_head, state_hash from {schema}.agent_state"
            )
        }
        assert set(states) == set(exp.slots), (
            sorted(set(exp.slots) - set(states))[:5], sorted(set(states) - set(exp.slots))[:5]
        )
        for a, slot in exp.slots.items():
            st, seq, lo, head, sh = states[a]
            assert st == encode_state(slot.state), f"agent_state of {a} differs from the fold"
            assert sh == hashlib.sha256(st).digest(), a
            assert (seq, lo, head) == (slot.state.seq, slot.last_offset, exp.heads[a]), a
        # checkpoints: exactly where the fold says one is due, holding that state
        cps = {(a, s): (bytes(st), bytes(h)) for a, s, st, h in conn.execute(
            f"select agent_id, seq, state, state_hash from {schema}.checkpoints")}
        assert set(cps) == set(exp.checkpoints), (sorted(set(exp.checkpoints) ^ set(cps))[:5])
        for k, (st, h) in cps.items():
            assert st == exp.checkpoints[k], k
            assert hashlib.sha256(st).digest() == h, k
        # memories
        mems = {
            (a, m): {"tenant_id": t, "source": s, "text": x, "metadata": md,
                     "embedding": None if e is None else json.loads(e), "forgotten": f, "journal_offset": o}
            for a, m, t, s, x, md, e, f, o in conn.execute(
                f"select agent_id, memory_id, tenant_id, source, text, metadata, embedding::text, forgotten,"
                f" journal_offset from {schema}.memories"
            )
        }
        assert set(mems) == set(exp.memories), (sorted(set(exp.memories) ^ set(mems))[:5])
        for k, m in mems.items():
            want = exp.memories[k]
            emb, want_emb = m.pop("embedding"), want["embedding"]
            assert m == {kk: vv for kk, vv in want.items() if kk != "embedding"}, k
            assert (emb is None) == (want_emb is None), k
            if emb is not None:
                assert max(abs(a - b) for a, b in zip(emb, want_emb, strict=True)) < 1e-6, k
    return exp
