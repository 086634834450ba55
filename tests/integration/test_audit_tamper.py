"""``aosk audit verify`` against tampering with what people query, on the real broker and
PostgreSQL (docs/recovery.md, "audit verify failed", points here).

One journal (a workload over a few tenants with budgets and memories, plus agents that
page context out, store, embed and forget memories, request checkpoints and suspend) is
projected into schema ``tamper`` with a checkpoint every 20 records. Each tampering test
edits it inside a transaction that is rolled back afterwards (verify reads through the
same connection, so it sees the edit), so the tests are independent; tests that need the
CLI to see a committed edit use schemas of their own. Checked:

1. agent_state columns (status, capabilities, tokens_left, tenant_id) edited;
2. a stored state (agent_state or a checkpoint) replaced together with its state_hash;
3. a checkpoint deleted (while ``aosk db thin-checkpoints`` leaves a trace verify accepts);
4. a memory's text or tenant edited (also with its content_hash recomputed);
5. an agent deleted from every table: only ``--against-journal`` can tell (and a state
   forged consistently in every table: only ``--refold``).

An untouched schema passes plain and ``--against-journal``; a second schema projected
with other batch sizes by two processes has the same digests (the batch-dependent
``audit_log.state_hash`` is left out of them) and verifies too.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aosk.config import Settings
from aosk.events import (
    AgentSpawned,
    AgentStarted,
    AgentSuspended,
    Budgets,
    CheckpointRequested,
    ContextAppended,
    MemoryEmbedded,
    MemoryForgotten,
    MemoryStored,
)
from aosk.journal import JournalReader
from aosk.kernel import decode_state, encode_state
from aosk.projectors.audit_journal import verify_against_journal
from aosk.projectors.checkpoints import thin
from aosk.projectors.digest import digest_schema
from aosk.projectors.rows import memory_hash
from aosk.projectors.runner import ensure_journal
from aosk.reads.audit import VerifyResult, verify
from aosk.workload import generate_workload, produce_workload
from projection_oracle import end_offsets
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "tamper"
MEM_AGENT = "audit-mem"
SMALL_WINDOW = Budgets(max_tokens=50_000, max_tool_calls=50, max_steps=500, context_window_tokens=200)
EMB = tuple(float(i % 5) / 5 + 0.01 for i in range(384))


def _h(agent: str, tenant: str = "acme") -> dict[str, Any]:
    return dict(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id=tenant, occurred_at=1, origin="client")


def _scenario(agent: str, tenant: str) -> list[Any]:
    """Memories stored, embedded, forgotten and paged out; checkpoints requested and on suspend."""
    items: list[Any] = [
        AgentSpawned(**_h(agent, tenant), parent_id=None, name=agent, priority=5, capabilities=("search", "browse"),
                     budgets=SMALL_WINDOW, metadata={}),
        AgentStarted(**_h(agent, tenant)),
    ]
    for i in range(4):
        items.append(MemoryStored(**_h(agent, tenant), memory_id=f"m{i}", text=f"fact {i} about {agent}",
                                  embedding=EMB if i == 0 else None, importance=0.5, metadata={"i": str(i)}))
    items += [
        MemoryEmbedded(**_h(agent, tenant), memory_id="m1", embedding=EMB),
        MemoryForgotten(**_h(agent, tenant), memory_id="m2"),
        CheckpointRequested(**_h(agent, tenant)),
    ]
    for i in range(9):  # 9 x 40 tokens through a 200-token window: entries page out into memories
        items.append(ContextAppended(**_h(agent, tenant), entry_id=f"ctx{i}", role="user", content=f"context {i}",
                                     tokens=40, importance=0.3))
    items.append(AgentSuspended(**_h(agent, tenant), reason="operator"))
    return items


@pytest.fixture(scope="module")
def journal(settings: Settings) -> dict[int, int]:
    """The module's journal, produced once; its end offsets."""
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    ensure_journal(bootstrap, settings)
    w = generate_workload(agents=10, events=2500, seed=11, garbage_every=113)
    produce_workload(bootstrap, topic, [*w.items, *_scenario(MEM_AGENT, "acme"), *_scenario("audit-mem-2", "globex")])
    return end_offsets(bootstrap, topic)


def _project(settings: Settings, journal: dict[int, int], tmp: Path, schema: str, *args: str,
             processes: int = 1) -> None:
    out = run_cli(settings, "db", "migrate", "--schema", schema, "--checkpoint-every", "20")
    assert out.returncode == 0, out.stderr
    procs = Projectors(settings, tmp, schema=schema, args=("--poll-ms", "20", *args))
    try:
        for i in range(processes):
            procs.start(f"p{i}")
        wait_caught_up(settings.storage.postgresql.dsn, schema, journal, timeout=120, procs=procs)
    finally:
        assert set(procs.stop_all().values()) == {0}


@pytest.fixture(scope="module")
def projected(settings: Settings, journal: dict[int, int], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Schema ``tamper``, projected once and never changed by a test; the DSN."""
    _project(settings, journal, tmp_path_factory.mktemp("tamper"), SCHEMA, "--batch-max", "50")
    return settings.storage.postgresql.dsn


@contextmanager
def tampered(dsn: str, *statements: str | tuple[str, tuple[Any, ...]]) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside a transaction that applied ``statements`` and is rolled back at the end."""
    with psycopg.connect(dsn) as conn:
        with conn.transaction(force_rollback=True):
            for s in statements:
                q, params = (s, None) if isinstance(s, str) else s
                conn.execute(q, params)
            yield conn


def _broken(res: VerifyResult, agent: str, *words: str) -> str:
    assert not res.ok, "verify passed after tampering"
    text = "\n".join(str(b) for b in res.breaks)
    mine = [str(b) for b in res.breaks if b.agent_id == agent]
    assert mine, f"no break names agent {agent}:\n{text}"
    for w in words:
        assert any(w in b for b in mine), f"{w!r} not in the breaks of {agent}:\n{text}"
    return text


def _one(conn: psycopg.Connection[Any], q: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(q, params).fetchone()
    assert row is not None, q
    return tuple(row)


# --- an untouched database ---------------------------------------------------------------


def test_untouched_schema_passes_plain_and_against_the_journal(settings: Settings, projected: str) -> None:
    with psycopg.connect(projected) as conn:
        res = verify(conn, SCHEMA)
        assert res.ok, res.breaks[:5]
        n_cp, n_mem, n_hashed = _one(conn, f"select (select count(*) from {SCHEMA}.checkpoints),"
                                           f" (select count(*) from {SCHEMA}.memories where content_hash is not null),"
                                           f" (select count(*) from {SCHEMA}.audit_log where state_hash is not null)")
        assert n_cp > 50 and n_mem > 20 and n_hashed > n_cp
    plain = run_cli(settings, "audit", "verify", "--schema", SCHEMA)
    assert plain.returncode == 0, plain.stderr
    assert "agent_state, checkpoints and memories match" in plain.stdout
    full = run_cli(settings, "audit", "verify", "--schema", SCHEMA, "--against-journal", "--no-progress")
    assert full.returncode == 0, full.stderr
    assert f"journal matches: {res.rows} records" in full.stdout
    refold = run_cli(settings, "audit", "verify", "--schema", SCHEMA, "--refold", "--no-progress")
    assert refold.returncode == 0, refold.stderr
    assert "every agent_state and checkpoint state is the fold's" in refold.stdout


def test_a_rebuild_with_other_batches_has_the_same_digests_and_verifies(
    settings: Settings, journal: dict[int, int], projected: str, tmp_path: Path,
) -> None:
    """Two processes, tiny batches: state hashes land on other audit rows, every digest
    (which leaves that column out) is the same; thinning its checkpoints keeps it verified."""
    _project(settings, journal, tmp_path, "tamper_twin", "--batch-max", "7", processes=2)
    with psycopg.connect(projected) as conn:
        assert digest_schema(conn, "tamper_twin") == digest_schema(conn, SCHEMA)
        heads = _one(conn, "select count(*) from (select journal_partition, journal_offset from tamper.audit_log"
                           " where state_hash is not null except select journal_partition, journal_offset"
                           " from tamper_twin.audit_log where state_hash is not null) d")
        assert heads[0] > 0  # the column differs: it really is batch-dependent
    thinned = run_cli(settings, "db", "thin-checkpoints", "--schema", "tamper_twin", "--keep-last", "1")
    assert thinned.returncode == 0, thinned.stderr
    assert "deleted 0 checkpoints" not in thinned.stdout
    ok = run_cli(settings, "audit", "verify", "--schema", "tamper_twin", "--against-journal", "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_rows_written_before_migration_0003_still_verify(projected: str) -> None:
    """A schema projected by an older AOSK: no hashes on its rows, and the marker the
    migration wrote says so; rows after the marker must carry them."""
    with psycopg.connect(projected) as conn:
        (offsets,) = _one(conn, f"select json_object_agg(partition, next_offset)::text from {SCHEMA}.projector_offsets")
    old = [f"update {SCHEMA}.audit_log set state_hash = null, checkpoint = null, memory_hashes = null",
           f"update {SCHEMA}.memories set content_hash = null",
           f"delete from {SCHEMA}.checkpoints_thinned"]
    marker = (f"update {SCHEMA}.projection_meta set value = %s where key = 'audit_hashes_from'", (offsets,))
    with tampered(projected, *old, marker) as c:
        res = verify(c, SCHEMA)
        assert res.ok, res.breaks[:5]
    with tampered(projected, *old) as c:  # the same rows, but the marker says they were written with hashes
        _broken(verify(c, SCHEMA, agent_id=MEM_AGENT), MEM_AGENT, "records no state hash", "has no content_hash")


# --- 1. queryable columns of agent_state -------------------------------------------------


@pytest.mark.parametrize(("column", "value"), [
    ("status", "'TERMINATED'"),
    ("capabilities", "array['root', 'shell']"),
    ("tokens_left", "tokens_left + 1000000"),
    ("tenant_id", "'globex'"),
])
def test_edited_agent_state_column_is_caught(projected: str, column: str, value: str) -> None:
    with tampered(projected, f"update {SCHEMA}.agent_state set {column} = {value} where agent_id = '{MEM_AGENT}'") as c:
        _broken(verify(c, SCHEMA), MEM_AGENT, f"{column} is ", "differ from its stored state")


def test_cli_exits_1_naming_the_agent_and_the_column(settings: Settings, journal: dict[int, int],
                                                     tmp_path: Path) -> None:
    schema = "tamper_cli"
    _project(settings, journal, tmp_path, schema, "--batch-max", "200")
    dsn = settings.storage.postgresql.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"update {schema}.agent_state set status = 'RUNNING' where agent_id = %s", (MEM_AGENT,))
    bad = run_cli(settings, "audit", "verify", "--schema", schema)
    assert bad.returncode == 1, bad.stdout
    assert f"agent {MEM_AGENT} seq" in bad.stderr and "status is 'RUNNING' but should be 'SUSPENDED'" in bad.stderr


# --- 2. a stored state replaced together with its hash ------------------------------------


def _forged(state: bytes) -> tuple[bytes, bytes, str]:
    """``state`` with another name, canonical; (bytes, sha256, the name)."""
    doc = json.loads(state)
    doc["identity"]["name"] = "forged"
    forged = encode_state(decode_state(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()))
    return forged, hashlib.sha256(forged).digest(), "forged"


def test_state_blob_and_state_hash_edited_together_are_caught(projected: str) -> None:
    with psycopg.connect(projected) as conn:
        (state,) = _one(conn, f"select state from {SCHEMA}.agent_state where agent_id = %s", (MEM_AGENT,))
    blob, h, name = _forged(bytes(state))
    edit = (f"update {SCHEMA}.agent_state set state = %s, state_hash = %s, name = %s where agent_id = %s",
            (blob, h, name, MEM_AGENT))
    with tampered(projected, edit) as c:
        text = _broken(verify(c, SCHEMA), MEM_AGENT, "not the state the audit row at seq")
        assert "columns differ" not in text  # the queryable columns were forged consistently


def test_checkpoint_blob_and_state_hash_edited_together_are_caught(projected: str) -> None:
    with psycopg.connect(projected) as conn:
        seq, state = _one(conn, f"select seq, state from {SCHEMA}.checkpoints where agent_id = %s"
                                " and reason = 'requested'", (MEM_AGENT,))
    blob, h, _ = _forged(bytes(state))
    edit = (f"update {SCHEMA}.checkpoints set state = %s, state_hash = %s where agent_id = %s and seq = %s",
            (blob, h, MEM_AGENT, seq))
    with tampered(projected, edit) as c:
        _broken(verify(c, SCHEMA), MEM_AGENT, f"seq {seq}: the checkpoint's state", "is not the state its audit row")


def test_a_forgery_consistent_in_every_table_is_caught_by_refolding_the_journal(
    settings: Settings, projected: str,
) -> None:
    """The state, its hash, its queryable columns and the hash its audit row records all
    forged alike (and a checkpoint the same way): only folding the journal again tells."""
    with psycopg.connect(projected) as conn:
        seq, state = _one(conn, f"select seq, state from {SCHEMA}.agent_state where agent_id = %s", (MEM_AGENT,))
        cp_seq, cp_state = _one(conn, f"select seq, state from {SCHEMA}.checkpoints where agent_id = %s"
                                      " and reason = 'requested'", (MEM_AGENT,))
    blob, h, name = _forged(bytes(state))
    cp_blob, cp_h, _ = _forged(bytes(cp_state))
    edits = [
        (f"update {SCHEMA}.agent_state set state = %s, state_hash = %s, name = %s where agent_id = %s",
         (blob, h, name, MEM_AGENT)),
        (f"update {SCHEMA}.checkpoints set state = %s, state_hash = %s where agent_id = %s and seq = %s",
         (cp_blob, cp_h, MEM_AGENT, cp_seq)),
        (f"update {SCHEMA}.audit_log set state_hash = %s where agent_id = %s and seq = %s", (h, MEM_AGENT, seq)),
        (f"update {SCHEMA}.audit_log set state_hash = %s where agent_id = %s and seq = %s", (cp_h, MEM_AGENT, cp_seq)),
        # the suspend that ends the agent made a checkpoint of the same state
        (f"update {SCHEMA}.checkpoints set state = %s, state_hash = %s where agent_id = %s and seq = %s",
         (blob, h, MEM_AGENT, seq)),
    ]
    with tampered(projected, *edits) as c:
        assert verify(c, SCHEMA).ok
        with JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as reader:
            assert verify_against_journal(c, SCHEMA, reader).ok
            res = verify_against_journal(c, SCHEMA, reader, refold=True)
        _broken(res, MEM_AGENT, "agent_state.state is not the state the journal folds to",
                f"seq {cp_seq}: the checkpoint at seq {cp_seq} is not the state the journal folds to")


# --- 3. checkpoints deleted, or thinned -------------------------------------------------


def test_deleted_checkpoint_is_caught_and_thinned_ones_are_not(projected: str) -> None:
    with tampered(projected) as c:
        deleted = thin(c, SCHEMA, keep_last=1, keep_every=1000)
        assert deleted > 20
        assert verify(c, SCHEMA).ok
        agent, seq = _one(c, f"select agent_id, seq from {SCHEMA}.checkpoints where reason = 'interval'"
                             " order by agent_id, seq limit 1")
        c.execute(f"delete from {SCHEMA}.checkpoints where agent_id = %s and seq = %s", (agent, seq))
        _broken(verify(c, SCHEMA), agent, f"seq {seq}: the interval checkpoint this record made is missing")
    for reason in ("requested", "suspended"):
        edit = (f"delete from {SCHEMA}.checkpoints where agent_id = %s and reason = %s", (MEM_AGENT, reason))
        with tampered(projected, edit) as c:
            _broken(verify(c, SCHEMA), MEM_AGENT, f"the {reason} checkpoint this record made is missing")
    # noting a non-interval checkpoint as thinned does not hide its deletion
    hide = (f"with gone as (delete from {SCHEMA}.checkpoints where agent_id = %s and reason = 'suspended'"
            f" returning agent_id, seq) insert into {SCHEMA}.checkpoints_thinned select * from gone", (MEM_AGENT,))
    with tampered(projected, hide) as c:
        _broken(verify(c, SCHEMA), MEM_AGENT, "only interval checkpoints are thinned")
    # nor does clearing what the audit row records: the suspend follows from the chain's columns
    with psycopg.connect(projected) as conn:
        (seq,) = _one(conn, f"select seq from {SCHEMA}.checkpoints where agent_id = %s and reason = 'suspended'",
                      (MEM_AGENT,))
    both = (f"delete from {SCHEMA}.checkpoints where agent_id = %s and seq = %s", (MEM_AGENT, seq))
    clear = (f"update {SCHEMA}.audit_log set checkpoint = null where agent_id = %s and seq = %s", (MEM_AGENT, seq))
    with tampered(projected, both, clear) as c:
        _broken(verify(c, SCHEMA), MEM_AGENT, "made a suspended checkpoint but its audit row records none")


# --- 4. memories --------------------------------------------------------------------------


@pytest.mark.parametrize(("memory_id", "column", "value"), [
    ("m3", "text", "'a planted fact'"),
    ("m0", "tenant_id", "'globex'"),
    ("ctx0", "text", "'rewritten context'"),
    ("m2", "tenant_id", "'globex'"),  # forgotten: its tombstone is hashed
])
def test_edited_memory_is_caught(projected: str, memory_id: str, column: str, value: str) -> None:
    edit = (f"update {SCHEMA}.memories set {column} = {value} where agent_id = %s and memory_id = %s",
            (MEM_AGENT, memory_id))
    with tampered(projected, edit) as c:
        assert c.execute(f"select count(*) from {SCHEMA}.memories where agent_id = %s and memory_id = %s",
                         (MEM_AGENT, memory_id)).fetchone() == (1,)
        _broken(verify(c, SCHEMA), MEM_AGENT, f"memory {memory_id}", "does not hash to its content_hash")


def test_memory_edited_with_its_content_hash_is_caught_by_the_audit_row(projected: str) -> None:
    with psycopg.connect(projected) as conn:
        conn.execute("set local search_path to " + SCHEMA)
        cur = conn.execute("select * from memories where agent_id = %s and memory_id = 'm3'", (MEM_AGENT,))
        names = [d.name for d in cur.description or ()]
        row = dict(zip(names, cur.fetchone() or (), strict=True))
    row["tenant_id"] = "globex"
    edit = (f"update {SCHEMA}.memories set tenant_id = 'globex', content_hash = %s where agent_id = %s"
            " and memory_id = 'm3'", (memory_hash(row), MEM_AGENT))
    with tampered(projected, edit) as c:
        _broken(verify(c, SCHEMA), MEM_AGENT, "memory m3 (tenant globex) is not what the record at")


# --- 5. an agent deleted from every table -------------------------------------------------


def _delete_agent(agent: str, schema: str = SCHEMA) -> list[tuple[str, tuple[Any, ...]]]:
    return [(f"delete from {schema}.{t} where agent_id = %s", (agent,))
            for t in ("agent_state", "audit_log", "checkpoints", "memories")]


def test_agent_deleted_everywhere_is_caught_only_against_the_journal(settings: Settings, projected: str) -> None:
    with tampered(projected, *_delete_agent(MEM_AGENT)) as c:
        assert verify(c, SCHEMA).ok  # nothing left in PostgreSQL remembers it
        with JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as reader:
            res = verify_against_journal(c, SCHEMA, reader)
        text = _broken(res, MEM_AGENT, "has no audit row")
        assert len([b for b in res.breaks if b.agent_id == MEM_AGENT]) == len(_scenario(MEM_AGENT, "acme")), text


def test_audit_row_with_another_record_hash_is_caught_against_the_journal(settings: Settings, projected: str) -> None:
    """A row rewritten with a consistent chain (value_hash and every hash after it
    recomputed) passes plain verify; the journal still tells."""
    from aosk.projectors.rows import link

    with psycopg.connect(projected) as conn:
        rows = conn.execute(f"select seq, value_hash, hash, verdict_bytes is null from {SCHEMA}.audit_log"
                            " where agent_id = %s order by seq", ("audit-mem-2",)).fetchall()
        (p, off) = _one(conn, f"select journal_partition, journal_offset from {SCHEMA}.audit_log"
                              " where agent_id = %s and seq = 3", ("audit-mem-2",))
    # recompute the chain from seq 3 on with a forged value hash, keeping each verdict
    from aosk.kernel import canonical_verdict_bytes
    from aosk.reads.audit import verdict_from_row

    with tampered(projected) as c:
        cols = [d.name for d in c.execute(f"select * from {SCHEMA}.audit_log limit 0").description or ()]
        prev = bytes(rows[1][2])
        for seq, vh, _, _ in rows[2:]:
            r = dict(zip(cols, c.execute(f"select * from {SCHEMA}.audit_log where agent_id = %s and seq = %s",
                                         ("audit-mem-2", seq)).fetchone() or (), strict=True))
            vh = hashlib.sha256(b"forged").digest() if seq == 3 else bytes(vh)
            new = link(prev, seq, vh, canonical_verdict_bytes(verdict_from_row(r)))
            c.execute(f"update {SCHEMA}.audit_log set value_hash = %s, hash = %s where agent_id = %s and seq = %s",
                      (vh, new, "audit-mem-2", seq))
            prev = new
        c.execute(f"update {SCHEMA}.agent_state set audit_head = %s where agent_id = %s", (prev, "audit-mem-2"))
        assert verify(c, SCHEMA).ok
        with JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as reader:
            res = verify_against_journal(c, SCHEMA, reader)
        _broken(res, "audit-mem-2", f"audit row at {p}:{off} records another value_hash")


def test_cli_against_journal_exits_1_naming_the_deleted_agent(settings: Settings, journal: dict[int, int],
                                                             tmp_path: Path) -> None:
    schema = "tamper_gone"
    _project(settings, journal, tmp_path, schema, "--batch-max", "500")
    with psycopg.connect(settings.storage.postgresql.dsn, autocommit=True) as conn:
        for q, params in _delete_agent(MEM_AGENT, schema):
            conn.execute(q, params)
    plain = run_cli(settings, "audit", "verify", "--schema", schema)
    assert plain.returncode == 0, plain.stderr
    bad = run_cli(settings, "audit", "verify", "--schema", schema, "--against-journal")
    assert bad.returncode == 1, bad.stdout
    assert "audit log DIFFERS from the journal" in bad.stderr
    assert f"agent {MEM_AGENT}: journal record " in bad.stderr and "has no audit row" in bad.stderr
