"""A garbage record (``C3 01`` + 8 bytes: an "unknown fingerprint") halts its partition in
the worker and the projector; ``aosk db status`` and ``aosk health`` show it STOPPED with
the true lag; ``aosk replay`` warns about it; ``aosk journal quarantine`` releases it, and
then the worker, the projector, a full replay and ``state --at-offset`` all fold the
record as rejected ``quarantined``, with the same states. Real broker, real PostgreSQL,
real processes. docs/recovery.md ("A partition stopped at an unknown schema fingerprint")
points here."""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid

import psycopg
import pytest
from confluent_kafka import Producer

from aosk.client import KernelClient
from aosk.events import AgentStarted, Budgets, ContextAppended, decode_transition
from aosk.journal import JournalReader
from aosk.kernel import fold_with_verdicts, state_hash
from aosk.partitioning import partition_for
from aosk.projectors.history import state_at
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from projector_harness import Projectors, projected, run_cli, wait_caught_up
from worker_harness import Workers, end_offsets, read_topic

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=100_000, max_tool_calls=100, max_steps=1_000, context_window_tokens=4_000)
GARBAGE = b"\xc3\x01" + b"\x5a" * 8  # magic + a fingerprint no schema has, nothing else
P = 3


def _verdicts(bootstrap: str, topic: str) -> dict[tuple[int, int], object]:
    return {(t.journal_partition, t.journal_offset): t
            for t in (decode_transition(m.value) for m in read_topic(bootstrap, topic))}


def _status_row(stdout: str, partition: int) -> list[str]:
    for line in stdout.splitlines():
        cols = line.split()
        if cols and cols[0] == str(partition) and len(cols) > 6:
            return cols
    raise AssertionError(f"no row for partition {partition} in:\n{stdout}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stopped_series(port: int) -> list[str]:
    """The aosk_partition_stopped samples a process serves at /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return [line for line in text.splitlines() if line.startswith("aosk_partition_stopped{")]


def _journal(settings) -> list:
    k = settings.kafka
    with JournalReader(k.bootstrap_servers, k.journal_topic) as reader:
        return [r for p in range(k.journal_partitions) for r in reader.read(p, 0)]


def test_garbage_halts_its_partition_until_quarantined_then_every_reader_agrees(settings, tmp_path) -> None:
    s = settings
    k = s.kafka
    bootstrap, dsn = k.bootstrap_servers, s.storage.postgresql.dsn
    ensure_topics(bootstrap, k, mark_new_journal=True)
    names = (f"q-{uuid.uuid4().hex[:6]}-{i}" for i in range(100_000))
    stuck, bystander = [n for n in names if partition_for(n, k.journal_partitions) == P][:2]
    others = [f"o-{i}" for i in range(10)]
    with KernelClient.from_settings(s) as kernel:
        for a in [stuck, bystander, *others]:
            kernel.spawn(agent_id=a, tenant_id="t", name=a, budgets=BUDGETS)
            kernel.emit(AgentStarted, agent_id=a, tenant_id="t")
        kernel.flush()
        raw = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
        raw.produce(k.journal_topic, key=stuck.encode(), value=GARBAGE)
        assert raw.flush(30) == 0
        bad = end_offsets(bootstrap, k.journal_topic)[P] - 1
        for i in range(3):
            for a in [stuck, bystander]:
                kernel.emit(ContextAppended, agent_id=a, tenant_id="t", entry_id=f"e{i}", role="user",
                            content=f"after the garbage {i}", tokens=3, importance=0.5)
        kernel.flush()
    ends = end_offsets(bootstrap, k.journal_topic)
    assert ends[P] - bad == 7  # the garbage and six records behind it

    wport, pport = _free_port(), _free_port()
    projectors = Projectors(s, tmp_path, schema="aosk", args=("--metrics-port", str(pport)))
    try:
        with Workers(s, tmp_path, args=("--metrics-port", str(wport))) as workers:
            workers.start("w1")
            projectors.start("p1")

            # Both halt partition P at the garbage; every other record is judged and projected.
            wanted = {(p, o) for p, e in ends.items() if p != P for o in range(e)} | {(P, o) for o in range(bad)}
            wait_for(lambda: wanted <= set(_verdicts(bootstrap, k.transitions_topic)), timeout=120,
                     what="verdicts up to the garbage")
            wait_for(lambda: "partition STOPPED" in workers.procs["w1"].log(), timeout=60, what="the worker's stop")
            assert f"aosk journal quarantine {P}:{bad} --reason" in workers.procs["w1"].log()
            wait_caught_up(dsn, "aosk", {p: (bad if p == P else e) for p, e in ends.items()}, timeout=120,
                           procs=projectors)

            def projector_stop() -> tuple | None:
                with psycopg.connect(dsn) as conn:
                    return conn.execute("select stopped_offset, stop_reason from aosk.projector_offsets "
                                        "where partition = %s", (P,)).fetchone()

            wait_for(lambda: projector_stop() == (bad, "unknown_fingerprint"), timeout=60,
                     what="the projector's stop in projector_offsets")
            assert not {(P, o) for o in range(bad, ends[P])} & set(_verdicts(bootstrap, k.transitions_topic))
            # ... and their metrics say so
            for port, role in ((wport, "worker"), (pport, "projector")):
                assert _stopped_series(port) == [
                    f'aosk_partition_stopped{{partition="{P}",reason="unknown_fingerprint",role="{role}"}} 1.0']

            # db status: STOPPED, and the lag the broker says (7), not 0.
            st = run_cli(s, "db", "status")
            assert st.returncode == 1, st
            row = _status_row(st.stdout, P)
            projected_col, end_col, lag_col = row[1], row[2], row[3]
            assert (int(projected_col), int(end_col), int(lag_col)) == (bad, ends[P], 7), st.stdout
            assert f"STOPPED at {bad}: unknown_fingerprint" in st.stdout
            assert "aosk journal quarantine" in st.stdout
            for p in ends:
                if p != P:
                    assert _status_row(st.stdout, p)[3] == "0"

            # The readiness /api/health will serve: degraded, naming the partition.
            h = run_cli(s, "health", "--format", "json")
            assert h.returncode == 1, h
            body = json.loads(h.stdout)
            assert body["status"] == "degraded"
            assert body["checks"]["kafka"]["status"] == body["checks"]["postgresql"]["status"] == "ok"
            (stop,) = body["checks"]["stopped_partitions"]["partitions"]
            assert (stop["partition"], stop["offset"], stop["reason"]) == (P, bad, "unknown_fingerprint")
            assert body["checks"]["projector_lag"]["by_partition"][str(P)] == 7

            # A rebuild meets the same record: it warns, it does not report success silently.
            r = run_cli(s, "replay", "--no-progress", timeout=300)
            assert r.returncode == 0, r
            assert f"warning: partition {P} is STOPPED at offset {bad}" in r.stderr

            # Only an unknown fingerprint can be quarantined.
            refused = run_cli(s, "journal", "quarantine", f"{P}:0", "--reason", "not garbage")
            assert refused.returncode == 1 and "only a record with an unknown schema fingerprint" in refused.stderr

            q = run_cli(s, "journal", "quarantine", f"{P}:{bad}", "--reason", "garbage from a broken producer")
            assert q.returncode == 0, q
            assert f"quarantines {P}:{bad}" in q.stdout
            again = run_cli(s, "journal", "quarantine", f"{P}:{bad}", "--reason", "twice")
            assert again.returncode == 0 and "already quarantined" in again.stdout
            ends = end_offsets(bootstrap, k.journal_topic)  # the marker is on P now

            # The partition flows again in the worker and the projector, without a restart.
            wanted = {(p, o) for p, e in ends.items() for o in range(e)}
            wait_for(lambda: wanted <= set(_verdicts(bootstrap, k.transitions_topic)), timeout=120,
                     what="verdicts for the whole journal after the quarantine")
            wait_caught_up(dsn, "aosk", ends, timeout=120, procs=projectors)
            assert "is quarantined by the marker" in workers.procs["w1"].log()
            assert "is quarantined by the marker" in projectors.log("p1")
            assert _stopped_series(wport) == _stopped_series(pport) == []
            verdicts = _verdicts(bootstrap, k.transitions_topic)
            assert workers.stop("w1") == 0
    finally:
        projectors.stop_all()
        projectors.close()

    v = verdicts[(P, bad)]
    assert (v.verdict, v.reason, v.agent_id) == ("rejected", "quarantined", stuck)
    assert "garbage from a broken producer" in v.message

    # The plain fold of the journal, resolving the quarantine the same way, is the truth.
    records = _journal(s)
    with JournalReader(bootstrap, k.journal_topic) as reader:
        quarantines = reader.quarantines()
        try:
            resolved = [quarantines.resolve(r) for r in records]
        finally:
            quarantines.close()
    slots, plain = fold_with_verdicts(resolved)
    by_pos = {(x.partition, x.offset): x for x in plain}
    assert by_pos[(P, bad)].reason == "quarantined"
    assert by_pos[(P, bad)].state_hash == v.state_hash and by_pos[(P, bad)].seq == v.seq
    for pos, t in verdicts.items():
        assert (t.verdict, t.reason, t.seq, t.state_hash) == (
            by_pos[pos].kind, by_pos[pos].reason, by_pos[pos].seq, by_pos[pos].state_hash), pos

    with psycopg.connect(dsn) as conn:
        stored = dict(conn.execute("select agent_id, state_hash from aosk.agent_state").fetchall())
        audit = conn.execute("select kind, reason, seq from aosk.audit_log where journal_partition = %s "
                             "and journal_offset = %s", (P, bad)).fetchone()
        assert conn.execute("select stopped_offset from aosk.projector_offsets where partition = %s",
                            (P,)).fetchone() == (None,)
    assert audit == ("rejected", "quarantined", v.seq)
    for a in (stuck, bystander):
        assert bytes(stored[a]) == state_hash(slots[a].state), a

    # Time travel across the record: the state right after it, and after the last record.
    with psycopg.connect(dsn) as conn, JournalReader(bootstrap, k.journal_topic) as reader:
        at_bad = state_at(conn, "aosk", reader, stuck, offset=bad)
        at_end = state_at(conn, "aosk", reader, stuck, offset=ends[P] - 1)
    assert (at_bad.state.seq, at_bad.state_hash) == (v.seq, v.state_hash)
    assert at_end.state_hash == state_hash(slots[stuck].state)
    cli = run_cli(s, "state", stuck, "--at-offset", str(bad))
    assert cli.returncode == 0 and str(v.seq) in cli.stdout, cli

    # A full replay now folds the record as the live projector did: identical digests.
    before = run_cli(s, "db", "digest", "--format", "json")
    r = run_cli(s, "replay", "--no-progress", timeout=300)
    assert r.returncode == 0 and "STOPPED" not in r.stderr, r
    after = run_cli(s, "db", "digest", "--format", "json")
    assert json.loads(before.stdout)["tables"] == json.loads(after.stdout)["tables"]
    assert projected(dsn, "aosk") == ends
    st = run_cli(s, "db", "status")
    assert st.returncode == 0 and "STOPPED" not in st.stdout, st
    audit = run_cli(s, "audit", "verify", "--refold", "--no-progress")
    assert audit.returncode == 0, audit
