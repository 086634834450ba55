"""The walk-through behind ``make demo``: each capability, run for real, with a short report.

Every section talks to the real broker and database of the embedded stack (or the
configured external ones) and prints what it measured or queried.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from aosk.config import Settings
from aosk.endpoints import Endpoints, resolve_endpoints


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def _section_stack(settings: Settings) -> Endpoints:
    _heading("1. the stack")
    if settings.kafka.bootstrap_servers is None or settings.storage.postgresql.host is None:
        from aosk.devstack.stack import dev_stack

        stack = dev_stack(settings)
        assert stack is not None
        t0 = time.monotonic()
        stack.up()
        for name, (ok, text) in stack.status().items():
            print(f"  {name:11s} {'up' if ok else 'DOWN'}  {text}")
        print(f"  (ready in {time.monotonic() - t0:.1f}s; data under {stack.state_dir})")
    return resolve_endpoints(settings)


def _section_smoke(settings: Settings, ep: Endpoints) -> None:
    _heading("2. the log and the database, end to end")
    import psycopg
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{settings.kafka.topic_prefix}.demo-smoke-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": ep.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": ep.bootstrap, "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random", "linger.ms": 5, "log_level": 3})
    n, agents = 2_000, 20
    t0 = time.monotonic()
    for i in range(n):
        producer.produce(topic, key=f"agent-{i % agents}".encode(), value=f"{i // agents}".encode())
        producer.poll(0)
    producer.flush(30)
    produced_s = time.monotonic() - t0
    consumer = Consumer({"bootstrap.servers": ep.bootstrap, "group.id": f"demo-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    last: dict[bytes, int] = {}
    in_order = True
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error():
                continue
            key, value = msg.key() or b"", msg.value() or b"0"
            seq = int(value)
            in_order &= last.get(key, -1) == seq - 1
            last[key] = seq
            got += 1
    consumer.close()
    admin.delete_topics([topic])
    print(f"  produced {n} records for {agents} agents over 12 partitions in {produced_s:.2f}s "
          f"(idempotent producer, acks=all)")
    print(f"  consumed {got}/{n}; per-agent order held: {'yes' if in_order else 'NO'}")
    with psycopg.connect(ep.dsn) as conn:
        version = conn.execute("select extversion from pg_extension where extname = 'vector'").fetchone()
        row = conn.execute(
            "select v.id, round((v.e <=> '[1,0,0]')::numeric, 3) from (values (1, '[1,0,0]'::vector), "
            "(2, '[0,1,0]'::vector), (3, '[0.9,0.1,0]'::vector)) v(id, e) where v.id <> 1 "
            "order by v.e <=> '[1,0,0]' limit 1"
        ).fetchone()
        assert row is not None  # a VALUES list of three rows always has a nearest neighbour
    print(f"  pgvector {version[0] if version else '?'}: nearest to [1,0,0] besides itself -> "
          f"item {row[0]} (cosine distance {row[1]})")


def _section_events(settings: Settings, ep: Endpoints) -> None:
    _heading("3. agents emit Avro events onto the journal")
    from aosk.cli.events import format_text, tail_records
    from aosk.client import KernelClient
    from aosk.errors import EventRejected
    from aosk.events import AgentStarted, Budgets, ContextAppended, ToolCallRequested
    from aosk.topics import ensure_topics

    made = ensure_topics(ep.bootstrap, settings.kafka, mark_new_journal=True)
    print(f"  topics: {', '.join(made.created) or 'all present'} "
          f"({'created' if made.created else 'checked'}: LogAppendTime, infinite retention)")
    if settings.kafka.journal_topic not in made.created:
        # A journal from an earlier run: switch it to the latest fold version too (a marker
        # repeating the version and partition count in force changes nothing).
        from aosk.kernel import LATEST_VERSION
        from aosk.topics import write_partition_markers

        write_partition_markers(ep.bootstrap, settings.kafka.journal_topic, fold_version=LATEST_VERSION,
                                partitions=settings.kafka.journal_partitions)
    print(f"  every journal partition runs the latest fold version, which knows the partition count "
          f"({settings.kafka.journal_partitions})")
    run = uuid.uuid4().hex[:4]
    agents = [f"demo-{run}-{name}" for name in ("planner", "researcher", "writer")]
    budgets = Budgets(max_tokens=50_000, max_tool_calls=20, max_steps=200, context_window_tokens=2_000)
    with KernelClient.from_settings(settings) as kernel:
        for a in agents:
            kernel.spawn(agent_id=a, tenant_id="acme", name=a.rsplit("-", 1)[1], budgets=budgets,
                         capabilities=["search", "browse"])
            kernel.emit(AgentStarted, agent_id=a, tenant_id="acme")
            kernel.emit(ContextAppended, agent_id=a, tenant_id="acme", entry_id=f"{a}-goal", role="user",
                        content="Summarise the quarterly report.", tokens=8, importance=0.96)
        last = kernel.emit(ToolCallRequested, agent_id=agents[1], tenant_id="acme", call_id="c-1",
                           tool="search", arguments='{"q": "Q3 revenue"}', timeout_ms=30_000).result()
        try:
            kernel.emit(ContextAppended, agent_id=agents[0], tenant_id="acme", entry_id="x", role="user",
                        content="x" * (settings.kafka.max_event_bytes + 1), tokens=1, importance=0.1)
        except EventRejected as e:
            print(f"  refused before Kafka: {str(e)[:100]}...")
    print(f"  {len(agents)} agents spawned with the SDK; last event at partition {last.partition}, "
          f"offset {last.offset} (broker time {last.timestamp})")
    print(f"  `aosk events tail --agent {agents[1]} --from-beginning --no-follow`:")
    for view in tail_records(settings, agent=agents[1], from_beginning=True, follow=False):
        print("    " + format_text(view)[:150])


class _Processes:
    """The demo's worker and projector, started in the background and stopped at the end."""

    def __init__(self, settings: Settings) -> None:
        self.log_dir = settings.dev.state_dir.expanduser().resolve() / "demo-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "aosk.cli", *args], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _section_kernel(settings: Settings, ep: Endpoints, procs: _Processes) -> dict[str, object]:
    _heading("4. the kernel judges every event (a kernel worker folds the journal)")
    from aosk.client import KernelClient
    from aosk.events import (
        AgentStarted,
        Budgets,
        LlmCallCompleted,
        LlmCallRequested,
        MemoryStored,
        MessageSent,
        ToolCallRequested,
    )

    procs.start("worker", "worker", "--node-id", "demo-worker", "--log-level", "warning")
    procs.start("projector", "project")
    print(f"  started `aosk worker` and `aosk project` in the background (logs: {procs.log_dir})")
    run = uuid.uuid4().hex[:4]
    alice, bob = f"alice-{run}", f"bob-{run}"
    small = Budgets(max_tokens=1_000, max_tool_calls=5, max_steps=100, context_window_tokens=2_000)
    dim = settings.memory.embedding_dimension
    with KernelClient.from_settings(settings, watch_verdicts=True) as kernel:
        def act(label: str, event_type: type[Any], agent: str, **fields: Any) -> object:
            ev = kernel.new_event(event_type, agent_id=agent, tenant_id="acme", **fields)
            kernel.send(ev)
            v = kernel.wait_for_verdict(ev.event_id, timeout=120)
            print(f"  {label:52s} -> {v.verdict:8s} {v.reason:22s} status {v.status}")
            return v

        for a in (alice, bob):
            sp = kernel.spawn(agent_id=a, tenant_id="acme", name=a.split("-")[0], budgets=small,
                              capabilities=["search"])
            v = kernel.wait_for_verdict(sp.event_id, timeout=120)
            print(f"  {'spawn ' + a:52s} -> {v.verdict:8s} {v.reason:22s} status {v.status}")
            act(f"{a}: AgentStarted", AgentStarted, a)
        act(f"{alice}: AgentStarted again", AgentStarted, alice)
        act(f"{alice}: tool 'search' (allowed)", ToolCallRequested, alice, call_id="c1", tool="search",
            arguments='{"q": "Q3"}', timeout_ms=60_000)
        act(f"{alice}: tool 'shell' (not a capability)", ToolCallRequested, alice, call_id="c2", tool="shell",
            arguments='{"cmd": "rm -rf /"}', timeout_ms=60_000)
        act(f"{alice}: MessageSent to {bob}", MessageSent, alice, message_id=f"m-{run}", to_agent_id=bob,
            body="can you check the totals?")
        vec = [0.0] * dim
        vec[0] = 1.0
        last = act(f"{bob}: MemoryStored (embedding {dim}-d)", MemoryStored, bob, memory_id=f"mem-{run}",
                   text="Q3 revenue was 4.2M", embedding=tuple(vec), importance=0.8, metadata={"source": "report"})
        act(f"{bob}: LlmCallRequested (600 prompt tokens)", LlmCallRequested, bob, call_id="l1", model="m",
            prompt_hash="p", prompt_tokens=600, timeout_ms=60_000)
        act(f"{bob}: LlmCallCompleted (+500 tokens: over budget)", LlmCallCompleted, bob, call_id="l1",
            response="...", completion_tokens=500, latency_ms=800)
        act(f"{bob}: another LlmCallRequested", LlmCallRequested, bob, call_id="l2", model="m",
            prompt_hash="p", prompt_tokens=10, timeout_ms=60_000)
        # A producer that does not hash keys like AOSK (librdkafka's default partitioner)
        # puts a record on another partition than its agent's: rejected, dead-lettered.
        from confluent_kafka import Producer

        from aosk.events import encode
        from aosk.partitioning import partition_for

        stray = kernel.new_event(AgentStarted, agent_id=alice, tenant_id="acme")
        wrong = (partition_for(alice, settings.kafka.journal_partitions) + 1) % settings.kafka.journal_partitions
        raw = Producer({"bootstrap.servers": ep.bootstrap, "log_level": 3})
        raw.produce(settings.kafka.journal_topic, key=alice.encode(), value=encode(stray), partition=wrong)
        raw.flush(30)
        v = kernel.wait_for_verdict(stray.event_id, timeout=120)
        print(f"  {alice + ': AgentStarted on partition ' + str(wrong):52s} -> {v.verdict:8s} {v.reason:22s} "
              f"judged as {v.agent_id}, copied to {settings.kafka.dead_letters_topic}")
    return {"alice": alice, "bob": bob, "last": last, "dim": dim}


def _section_projections(settings: Settings, ep: Endpoints, ctx: dict[str, object]) -> None:
    _heading("5. projections in PostgreSQL, exactly once (SQL answers)")
    import psycopg

    from aosk.client import ProjectionReader
    from aosk.reads.audit import verify
    from aosk.topics import ensure_topics
    from aosk.workload import generate_workload, produce_workload

    ensure_topics(ep.bootstrap, settings.kafka)
    wl = generate_workload(agents=20, events=3_000, seed=int(time.time()) % 1000,
                           prefix=f"fleet-{uuid.uuid4().hex[:4]}",
                           embedding_dim=int(ctx["dim"]))  # type: ignore[call-overload]
    t0 = time.monotonic()
    positions = produce_workload(ep.bootstrap, settings.kafka.journal_topic, wl.items)
    with ProjectionReader.from_settings(settings) as reader:
        last_by_partition: dict[int, int] = {}
        for p, o in positions:
            last_by_partition[p] = max(o, last_by_partition.get(p, -1))
        for p, o in last_by_partition.items():
            reader.wait_until_projected(p, o, timeout=300)
        print(f"  a fleet of 20 agents wrote {len(wl.items)} events; projected in {time.monotonic() - t0:.1f}s "
              f"({len(wl.illegal_event_ids)} illegal ones among them)")
        queries = [
            ("agents by status",
             "select status, sum(agents) from aosk.agents_by_status group by status order by 2 desc"),
            ("token spend per tenant", "select tenant_id, agents, tokens_used, tool_calls_used from "
             "aosk.token_spend_per_tenant order by tenant_id"),
            ("denied tool calls (latest 3)", "select agent_id, tool, seq from aosk.denied_tool_calls "
             "order by recorded_at desc, agent_id limit 3"),
            ("rejections by reason", "select reason, records from aosk.verdicts_by_reason where kind <> 'accepted' "
             "order by records desc limit 6"),
        ]
        with psycopg.connect(ep.dsn) as conn:
            for title, q in queries:
                print(f"  -- {title}:  {q}")
                for row in conn.execute(q).fetchall():
                    print("       " + " | ".join(str(c) for c in row))
            conn.commit()  # verify reads every table in one snapshot of its own: the projector keeps writing
            result = verify(conn, "aosk")
            print(f"  aosk audit verify: {'intact' if result.ok else 'BROKEN at ' + str(result.first)} "
                  f"({result.rows} audit rows over {result.agents} agents, hash-chained per agent)")
        _tamper(settings, ep, str(ctx["bob"]))
        bob = str(ctx["bob"])
        vec = [0.0] * int(ctx["dim"])  # type: ignore[call-overload]
        vec[0], vec[1] = 0.9, 0.1
        hits = reader.recall(vec, k=3, agent_id=bob)
        found = ", ".join(f"{h.text!r} ({h.distance:.3f})" for h in hits)
        print(f"  recall for {bob} (pgvector, cosine): {found}")
        from aosk.projectors.memory_index import ivfflat_lists, present

        with psycopg.connect(ep.dsn) as conn:
            kind = present(conn, "aosk")
            lists = ivfflat_lists(conn, "aosk")
            embedded = conn.execute("select count(embedding) from aosk.memories").fetchone()
        sized = f", {lists} list(s) for {embedded[0] if embedded else 0} embedded memories" if lists else ""
        print(f"  memories' vector index: {kind}{sized} (memory.index / AOSK_MEMORY_INDEX; candidates re-ranked by "
              "exact cosine; an agent's few memories are scanned exactly; aosk bench memory compares the kinds)")
        if lists is not None:
            print("    IVFFlat: one list (an exact scan) below 10,000 memories, then one per 1,000; the projectors "
                  "build it again, concurrently, each time the table doubles")
        view = reader.agent_state(bob)
        if view is not None:
            print(f"  {bob}: status {view.status}, tokens used {view.tokens_used}, left {view.tokens_left}")


def _tamper(settings: Settings, ep: Endpoints, agent: str) -> None:
    """Edits someone could make behind the kernel's back, each caught by audit verify (in
    transactions rolled back: the demo's data stays as it was)."""
    import psycopg

    from aosk.journal import JournalReader
    from aosk.projectors.audit_journal import verify_against_journal
    from aosk.reads.audit import verify

    edits: list[tuple[str, list[str]]] = [
        ("agent_state.status edited", ["update aosk.agent_state set status = 'RUNNING' where agent_id = %s"]),
        ("a memory's tenant_id edited", ["update aosk.memories set tenant_id = 'globex' where agent_id = %s"]),
        ("the agent deleted from every table", [f"delete from aosk.{t} where agent_id = %s"
                                                for t in ("agent_state", "audit_log", "checkpoints", "memories")]),
    ]
    with psycopg.connect(ep.dsn) as conn, JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
        # Each edit and its verify in one snapshot, while the live projector keeps writing.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for what, statements in edits:
            with conn.transaction(force_rollback=True):
                for q in statements:
                    conn.execute(q, (agent,))
                how = "aosk audit verify"
                found = verify(conn, "aosk")
                if found.ok:
                    how += " --against-journal"
                    found = verify_against_journal(conn, "aosk", reader)
            print(f"  tampering (rolled back) - {what}: {how} -> "
                  f"{'passes: NOT caught' if found.ok else str(found.first)[:120]}")


def _section_time_travel(settings: Settings, ep: Endpoints, ctx: dict[str, object]) -> None:
    _heading("6. time travel and fork")
    from aosk.client import KernelClient, ProjectionReader
    from aosk.kernel import derived_event_id

    alice = str(ctx["alice"])
    with ProjectionReader.from_settings(settings) as reader:
        now = reader.agent_state(alice)
        assert now is not None
        then = reader.state_at(alice, offset=now.last_offset - 1) if now.last_offset > 0 else None
        print(f"  {alice} now: seq {now.state.seq}, status {now.status}")
        if then is not None:
            print(f"  {alice} one record earlier (aosk state {alice} --at-offset {then.offset}): seq {then.state.seq}, "
                  f"status {then.state.status}, from {'checkpoint' if then.checkpoint_seq else 'the start'} "
                  f"+ {then.folded} records")
    with KernelClient.from_settings(settings, watch_verdicts=True) as kernel:
        req = kernel.fork(alice, tenant_id="acme", at_seq=2, new_agent_id=f"{alice}-fork")
        d = req.result()
        forked = kernel.wait_for_verdict(derived_event_id("AgentForked", req.event_id, d.partition, d.offset), 120)
        print(f"  aosk fork {alice} --at-seq 2 -> {forked.agent_id}: {forked.verdict}, status {forked.status} "
              f"(its own audit chain starts at AgentForked)")


def _section_replay(settings: Settings, ep: Endpoints) -> None:
    _heading("7. rebuild every projection from the journal (replay + digest)")
    import psycopg

    from aosk.client import ProjectionReader
    from aosk.journal import JournalReader
    from aosk.projectors.digest import digest_schema
    from aosk.reads.coverage import incomplete_partitions
    from aosk.waiting import wait_for

    with JournalReader(ep.bootstrap, settings.kafka.journal_topic) as jr, \
            ProjectionReader.from_settings(settings) as reader:
        ends = {p: jr.end_offset(p) for p in range(jr.partitions())}
        wait_for(lambda: all(reader.projected_offsets().get(p, 0) >= e for p, e in ends.items()),
                 timeout=120, what="the live projector to reach the end of the journal")
    with psycopg.connect(ep.dsn) as conn:
        before = digest_schema(conn, "aosk")
        # a schema projected before events were stored: the rebuild has the rows it lacked
        incomplete = incomplete_partitions(conn, "aosk")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "aosk.cli", "replay", "--drop-old", "--no-progress"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(f"  aosk replay failed:\n{out.stdout}{out.stderr}")
        return
    print("  " + out.stdout.strip().splitlines()[-1][:160])
    with psycopg.connect(ep.dsn) as conn:
        after = digest_schema(conn, "aosk")
    for table in before:
        same = before[table] == after.get(table)
        verdict = "identical" if same else "DIFFERENT"
        if not same and table == "events" and incomplete:
            verdict = (f"completed (the live table lacked the rows below offsets "
                       f"{', '.join(f'{p}:{o}' for p, o in incomplete.items())}, projected before events were stored)")
        print(f"  {table:18s} {str(after[table].get('rows', '?')):>7s} rows  digest "
              f"{str(after[table].get('sha256', ''))[:16]}  {verdict}")
    print(f"  (aosk db digest before and after; rebuilt and swapped in {time.monotonic() - t0:.1f}s while the "
          "live projector kept running)")


def _section_quarantine(settings: Settings, ep: Endpoints) -> None:
    _heading("8. a garbage record halts its partition; aosk journal quarantine releases it")

    import psycopg
    from confluent_kafka import Producer

    from aosk.client import KernelClient
    from aosk.events import AgentStarted, Budgets
    from aosk.waiting import wait_for

    k = settings.kafka
    budgets = Budgets(max_tokens=1_000, max_tool_calls=5, max_steps=100, context_window_tokens=2_000)
    agent = f"demo-garbage-{uuid.uuid4().hex[:6]}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aosk.cli", *args], capture_output=True, text=True, timeout=120)

    with KernelClient.from_settings(settings, watch_verdicts=True) as kernel:
        spawn = kernel.spawn(agent_id=agent, tenant_id="acme", name="victim", budgets=budgets)
        kernel.wait_for_verdict(spawn.event_id, 120)
        raw = Producer({"bootstrap.servers": ep.bootstrap, "partitioner": "murmur2_random", "log_level": 0})
        delivered: list[Any] = []
        raw.produce(k.journal_topic, key=agent.encode(), value=b"\xc3\x01" + b"\x5a" * 8,
                    on_delivery=lambda err, msg: delivered.append(msg))
        raw.flush(30)
        p, offset = delivered[0].partition(), delivered[0].offset()
        print(f"  a broken producer wrote C3 01 + 8 bytes for {agent} at {p}:{offset} (an unknown schema fingerprint)")
        started = kernel.emit(AgentStarted, agent_id=agent, tenant_id="acme")
        kernel.flush()

        def stopped() -> bool:
            with psycopg.connect(ep.dsn) as conn:
                row = conn.execute("select stopped_offset from aosk.projector_offsets where partition = %s",
                                   (p,)).fetchone()
            return row is not None and row[0] == offset

        wait_for(stopped, timeout=120, what=f"the projector to stop partition {p}")
        status = cli("db", "status")
        row = next((line for line in status.stdout.splitlines() if line.split()[:1] == [str(p)]), "")
        print(f"  aosk db status exits {status.returncode}; partition {p}: {' '.join(row.split()[:4])} ... "
              f"{row.split('  ')[-1].strip()}")
        print("    (columns: partition, projected, broker end, lag: the records stuck behind the stop)")
        out = cli("journal", "quarantine", f"{p}:{offset}", "--reason", "demo: garbage from a broken producer")
        print(f"  aosk journal quarantine {p}:{offset} --reason ... -> {out.stdout.strip()[:150]}")
        v = kernel.wait_for_verdict(started.event_id, 120)
        print(f"  the stuck AgentStarted is judged now: {v.verdict}, status {v.status} (seq {v.seq})")

    def flowing() -> bool:
        with psycopg.connect(ep.dsn) as conn:
            row = conn.execute("select kind, reason from aosk.audit_log where journal_partition = %s "
                               "and journal_offset = %s", (p, offset)).fetchone()
        return row is not None

    wait_for(flowing, timeout=120, what=f"the projector to go on with partition {p}")
    with psycopg.connect(ep.dsn) as conn:
        kind, reason = conn.execute("select kind, reason from aosk.audit_log where journal_partition = %s "
                                    "and journal_offset = %s", (p, offset)).fetchone() or ("?", "?")
    print(f"  audit_log at {p}:{offset}: {kind} / {reason}; `aosk db status` exits {cli('db', 'status').returncode}; "
          "a replay or `aosk state --at-offset` folds it the same way")


def _section_api(settings: Settings, ep: Endpoints) -> None:
    _heading("9. the front door: aosk api, as a client sees it (curl-like, per-tenant keys)")
    import json
    import socket
    import urllib.error
    import urllib.request

    from aosk.waiting import wait_for

    def call(method: str, path: str, key: str | None = None, body: object = None,
             headers: dict[str, str] | None = None, *, base_url: str | None = None) -> tuple[int, Any, Any]:
        sent = {**(headers or {}), **({"X-API-Key": key} if key else {})}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            sent["content-type"] = "application/json"
        req = urllib.request.Request((base_url or base) + path, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, r.headers, json.loads(raw) if "json" in r.headers.get("content-type", "") else raw
        except urllib.error.HTTPError as e:
            return e.code, e.headers, json.loads(e.read())

    def show(line: str) -> None:
        print(f"  {line[:150]}")

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def new_key(tenant: str, scope: str) -> str:
        made = subprocess.run([sys.executable, "-m", "aosk.cli", "keys", "create", "--tenant", tenant, "--scope",
                               scope, "--name", "demo"], capture_output=True, text=True, timeout=60, check=True)
        return made.stdout.strip().splitlines()[-1]

    key, other = new_key("acme", "admin"), new_key("globex", "admin")
    show(f"aosk keys create --tenant acme --scope admin -> {key[:14]}... (shown once, stored as SHA-256 only)")
    show(f"aosk keys create --tenant globex --scope admin -> {other[:14]}...")
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    with open(settings.dev.state_dir.expanduser().resolve() / "demo-logs" / "api.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aosk.cli", "api", "--host", "127.0.0.1", "--port", str(port),
                                 "--metrics-port", str(metrics_port), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return call("GET", "/health")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=60, what="aosk api to answer")
        show(f"aosk api --port {port} --metrics-port {metrics_port}   (docs/api.md has every route)")
        code, _, body = call("GET", "/api/health")
        show(f"GET /health -> 200; GET /api/health -> {code} {body['status']} "
             f"(checks: {', '.join(sorted(body['checks']))})")
        code, _, body = call("GET", "/api/v1/status")
        show(f"GET /api/v1/status without a key -> {code} {body['type'].rsplit('/', 1)[-1]}")

        idem = {"Idempotency-Key": str(uuid.uuid4())}
        spec = {"name": "researcher", "priority": 5, "capabilities": ["search"]}
        code, h, made = call("POST", "/api/v1/agents", key, spec, idem)
        agent = made["agent_id"]
        show(f"POST /api/v1/agents {json.dumps(spec)} -> {code} agent {agent} at {made['partition']}:"
             f"{made['offset']}")
        code, h, again = call("POST", "/api/v1/agents", key, spec, idem)
        show(f"  the same POST again (same Idempotency-Key, e.g. a retry after a timeout) -> {code} "
             f"Idempotent-Replayed: {h.get('Idempotent-Replayed')}, same agent: {again['agent_id'] == agent}")
        code, h, out = call("POST", f"/api/v1/agents/{agent}/events?wait=verdict", key,
                            {"type": "AgentStarted", "payload": {}})
        show(f"POST .../events?wait=verdict AgentStarted -> {code} verdict {out['verdict']['verdict']}, "
             f"status {out['verdict']['status']}")
        code, h, out = call("POST", "/api/v1/context?wait=verdict", key,
                            {"agent_id": agent, "role": "user", "content": "find the Q3 numbers"})
        show(f"POST /api/v1/context?wait=verdict -> {code} {out['verdict']['verdict']}")
        dim = settings.memory.embedding_dimension
        code, h, out = call("POST", f"/api/v1/agents/{agent}/events?wait=verdict", key, {
            "type": "MemoryStored", "payload": {"memory_id": "m-q3", "text": "Q3 revenue grew 12%",
                                                "embedding": [1.0] + [0.0] * (dim - 1), "importance": 0.8,
                                                "metadata": {}}})
        token = h.get("AOSK-Consistency-Token")
        show(f"POST .../events MemoryStored -> {code} {out['verdict']['verdict']}; "
             f"AOSK-Consistency-Token: {token}")
        code, h, view = call("GET", f"/api/v1/agents/{agent}", key, headers={"AOSK-Consistency-Token": token})
        show(f"GET /api/v1/agents/{{id}} with that token (read-your-writes) -> {code} {view['status']}, "
             f"seq {view['seq']}, tokens_used {view['tokens_used']}")
        code, _, hist = call("GET", f"/api/v1/agents/{agent}/events", key)
        show(f"GET .../events -> {code} {len(hist['events'])} records: "
             f"{', '.join(e['type'] + ' ' + e['verdict'] for e in hist['events'])}")
        first = hist["events"][0]["offset"]
        with urllib.request.urlopen(urllib.request.Request(base + f"/api/v1/agents/{agent}/stream",
                                                           headers={"X-API-Key": key,
                                                                    "Last-Event-ID": str(first)}),
                                    timeout=30) as stream:
            ids: list[int] = []
            deadline = time.monotonic() + 30
            while len(ids) < len(hist["events"]) - 1 and time.monotonic() < deadline:
                line = stream.readline().decode()
                if line.startswith("id:"):
                    ids.append(int(line[3:]))
        show(f"GET .../stream with Last-Event-ID: {first} (SSE) -> ids {ids}: every record after it, once")
        code, _, st = call("GET", f"/api/v1/agents/{agent}/state?at_offset={first}", key)
        show(f"GET .../state?at_offset={first} (time travel) -> {code} status {st['state']['status']} at seq "
             f"{st['seq']}")
        code, _, out = call("POST", "/api/v1/memories/search", key,
                            {"agent_id": agent, "query_embedding": [0.9, 0.1] + [0.0] * (dim - 2), "k": 3})
        show(f"POST /api/v1/memories/search -> {code} "
             f"{[(m['text'], round(m['distance'], 3)) for m in out['memories']]}")
        code, _, out = call("GET", f"/api/v1/agents/{agent}/audit/verify", key)
        show(f"GET .../audit/verify -> {code} intact: {out['intact']}, {out['records']} records, "
             f"head {str(out['head'])[:16]}...")
        code, _, fork = call("POST", f"/api/v1/agents/{agent}/fork", key, {"at_offset": first})
        show(f"POST .../fork {{\"at_offset\": {first}}} -> {code} child {fork['agent_id']}")
        code, _, out = call("POST", f"/api/v1/agents/{agent}/events", key,
                            {"type": "LlmCallCompleted", "payload": {}})
        show(f"POST .../events LlmCallCompleted (the runtime's to write) -> {code} "
             f"{out['type'].rsplit('/', 1)[-1]}")
        theirs = call("GET", f"/api/v1/agents/{agent}", other)
        missing = call("GET", f"/api/v1/agents/{uuid.uuid4()}", other)
        show(f"GET acme's agent with globex's key -> {theirs[0]}; a missing id -> {missing[0]}: "
             f"the same answer, ids reveal nothing across tenants")
        code, _, text = call("GET", "/metrics", base_url=f"http://127.0.0.1:{metrics_port}")
        lines = [line for line in text.decode().splitlines() if line.startswith("aosk_api_requests_total{")]
        show(f"GET :{metrics_port}/metrics -> {code} {len(lines)} aosk_api_requests_total series, e.g.")
        show(f"  {max(lines, key=lambda line: float(line.rsplit(' ', 1)[1]))}")
    finally:
        proc.terminate()
        proc.wait(20)


def _fleet_tasks(ep: Endpoints, run: str) -> dict[str, str]:
    """task id -> status of this run's tasks, from the tasks projection."""
    import psycopg

    with psycopg.connect(ep.dsn) as conn:
        if conn.execute("select to_regclass('aosk.tasks')").fetchone() == (None,):
            return {}
        rows = conn.execute("select task_id, status from aosk.tasks where task_id like %s",
                            (f"task-{run}-%",)).fetchall()
    return {t: st for t, st in rows}


def _ensure_fold_version_4(settings: Settings, ep: Endpoints) -> None:
    """A journal created before fold version 4 gets its markers (what `aosk kernel upgrade
    --to-version 4 --yes` writes): tasks need version 4."""
    from aosk.events import KernelUpgraded
    from aosk.journal import JournalReader
    from aosk.topics import write_partition_markers

    versions: dict[int, int] = {}
    with JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
        n = reader.partitions()
        for p in range(n):  # the markers alone (versions only go up); a quarantined record is skipped here
            for r in reader.read(p, 0, reader.end_offset(p)):
                if r.key is None and isinstance(r.event, KernelUpgraded):
                    versions[p] = max(versions.get(p, 1), r.event.fold_version)
    old = [p for p in range(n) if versions.get(p, 1) < 4]
    if old:
        write_partition_markers(ep.bootstrap, settings.kafka.journal_topic, fold_version=4, partitions=n)
        print(f"  this journal predates fold version 4 on {len(old)} partitions: wrote the markers "
              "(`aosk kernel upgrade --to-version 4 --yes`)")


def _section_fleet(settings: Settings, ep: Endpoints, procs: _Processes) -> None:
    _heading("10. a fleet run by `aosk runtime`: tasks, tools, memory, a message, a quota, a crash")
    import time
    from collections import Counter

    from aosk.client import KernelClient
    from aosk.events import Budgets, TaskSubmitted

    _ensure_fold_version_4(settings, ep)
    run = uuid.uuid4().hex[:4]
    big = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=8_000,
                  tokens_per_hour=100_000, calls_per_hour=1_000, tokens_per_request=10_000)
    tight = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=8_000,
                    tokens_per_hour=2_500, calls_per_hour=1_000, tokens_per_request=10_000, quota_window_ms=8_000)
    caps = ["calculator", "word_count", "remember", "recall", "send_message"]
    a = [f"fleet-{run}-{i}" for i in range(4)]
    quota = f"fleet-{run}-quota"
    tasks = [
        (a[0], "acme", "Work out calculator(expression='(17 + 25) * 3') and word_count(text='every agent action "
                       "is an event') for the report."),
        (a[0], "acme", "remember(text='The Q3 launch code of the blue rocket is 4417', importance=0.9)"),
        (a[1], "acme", f"send_message(to_agent_id='{a[2]}', body='the Q3 totals are ready'), then "
                       "calculator(expression='4200000 / 12')"),
        (a[2], "acme", "word_count(text='a message between agents is an event on both sides')"),
        (a[3], "globex", "calculator(expression='2 ** 10'), word_count(text='one tenant never sees another')"),
        (quota, "acme", "calculator(expression='1 + 1'), calculator(expression='2 + 2'), "
                        "calculator(expression='3 + 3'), calculator(expression='4 + 4')"),
    ]
    recall = (a[0], "acme", "recall(query='blue rocket launch code')")
    with KernelClient.from_settings(settings) as kernel:
        for agent in a + [quota]:
            tenant = "globex" if agent == a[3] else "acme"
            kernel.spawn(agent_id=agent, tenant_id=tenant, name=agent, budgets=tight if agent == quota else big,
                         capabilities=caps).result()
        for i, (agent, tenant, text) in enumerate(tasks):
            kernel.emit(TaskSubmitted, agent_id=agent, tenant_id=tenant, task_id=f"task-{run}-{i}", input=text,
                        metadata={}).result()
    print(f"  {len(a) + 1} agents in 2 tenants, {len(tasks)} tasks (TaskSubmitted), a recall once its memory is "
          f"projected; {quota} may use 2,500 tokens per 8 s window")
    procs.start("runtime-a", "runtime", "--log-level", "info")
    procs.start("runtime-b", "runtime", "--log-level", "info")
    print("  started two `aosk runtime` processes (one consumer group; each runs the agents of its partitions)")
    final = ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + 120

    def ended() -> dict[str, str]:
        return {t: st for t, st in _fleet_tasks(ep, run).items() if st in final}

    while len(ended()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    procs.procs["runtime-a"].send_signal(signal.SIGKILL)
    procs.procs["runtime-a"].wait(30)
    print(f"  SIGKILLed runtime-a with {len(ended())} tasks ended; restarted it: the next owner of its partitions "
          "performs any open call again with the same call id")
    procs.start("runtime-a2", "runtime", "--log-level", "info")
    while len(ended()) < len(tasks) and time.monotonic() < deadline:
        time.sleep(0.5)
    # recall searches the projection: once the remembered memory is projected, ask for it
    while not _memory_projected(ep, a[0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    with KernelClient.from_settings(settings) as kernel:
        kernel.emit(TaskSubmitted, agent_id=recall[0], tenant_id=recall[1], task_id=f"task-{run}-{len(tasks)}",
                    input=recall[2], metadata={}).result()
    tasks.append(recall)
    while len(ended()) < len(tasks) and time.monotonic() < deadline:
        time.sleep(0.5)
    done = ended()
    print(f"  tasks ended: {len(done)} of {len(tasks)}, {dict(sorted(Counter(done.values()).items()))}")
    held = sum((procs.log_dir / f"{n}.log").read_text(errors="replace").count(f"{quota} is rate limited")
               for n in ("runtime-a", "runtime-b", "runtime-a2") if (procs.log_dir / f"{n}.log").exists())
    print(f"  {quota} was held by its window quota {held} time(s) and resumed when the window turned")
    _fleet_sql(ep, run)
    answer = _fleet_output(ep, f"task-{run}-6")
    print(f"  the recall task's answer quotes the remembered memory (4417): {'4417' in answer}")


def _memory_projected(ep: Endpoints, agent: str) -> bool:
    import psycopg

    with psycopg.connect(ep.dsn) as conn:
        row = conn.execute("select count(*) from aosk.memories where agent_id = %s and embedding is not null "
                           "and text like %s", (agent, "%4417%")).fetchone()
    return bool(row and row[0])


def _fleet_output(ep: Endpoints, task_id: str) -> str:
    import psycopg

    with psycopg.connect(ep.dsn) as conn:
        row = conn.execute("select output from aosk.tasks where task_id = %s", (task_id,)).fetchone()
    return (row[0] or "") if row else ""


def _fleet_sql(ep: Endpoints, run: str) -> None:
    import psycopg

    with psycopg.connect(ep.dsn) as conn:
        print("  SQL> select task_id, agent_id, status, model_calls, tool_calls, tokens, output from aosk.tasks ...")
        for row in conn.execute(
            "select task_id, agent_id, status, model_calls, tool_calls, tokens, output from aosk.tasks "
            "where task_id like %s order by task_id", (f"task-{run}-%",),
        ).fetchall():
            output = (row[6] or "").replace("\n", " | ")
            print(f"    {row[0]:13s} {row[1]:22s} {row[2]:9s} {row[3]} model, {row[4]} tool calls, {row[5]:5d} tokens: "
                  f"{output[:70]}{'...' if len(output) > 70 else ''}")


def _section_cluster(settings: Settings) -> None:
    _heading("11. a cluster on one machine: 2 nodes behind nginx, metrics, a node killed whole")
    import json
    import urllib.error
    import urllib.request

    from aosk.waiting import wait_for

    def aosk(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aosk.cli", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def call(method: str, url: str, key: str, body: object = None) -> tuple[int, Any]:
        headers = {"X-API-Key": key, "X-Forwarded-For": "203.0.113.7"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers |= {"content-type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def show(line: str) -> None:
        print(f"  {line[:150]}")

    up = aosk("cluster", "up", "--nodes", "2")
    if up.returncode != 0:
        show("aosk cluster up failed: " + (up.stderr.strip().splitlines() or ["?"])[-1])
        aosk("cluster", "down")
        return
    try:
        listing = json.loads(aosk("cluster", "status", "--format", "json").stdout)
        url = listing["url"]
        show(f"aosk cluster up --nodes 2 -> {url}  (nginx: least_conn, keepalive 32, retries only when safe)")
        for node in listing["nodes"]:
            kids = ", ".join(f"{name} {pid}" for name, pid in sorted(node["children"].items()))
            show(f"  {node['node_id']}: supervisor {node['pid']}, API :{node['api_port']}; children {kids}")
        key = aosk("keys", "create", "--tenant", "acme", "--scope", "admin", "--name", "demo-cluster"
                   ).stdout.strip().splitlines()[-1]
        code, made = call("POST", f"{url}/api/v1/agents", key, {"name": "clustered", "capabilities": ["search"]})
        agent = made.get("agent_id", "?")
        show(f"POST {url}/api/v1/agents (Idempotency-Key) -> {code} {agent}")
        metrics_port = listing["nodes"][0]["metrics"]["worker"]["port"]
        scraped: list[str] = []

        def worker_reports() -> bool:
            # the worker serves its port once started, its series once it owns partitions
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                    scraped[:] = r.read().decode().splitlines()
            except OSError:
                return False
            return any(ln.startswith("aosk_consumer_lag_records{") for ln in scraped)

        wait_for(worker_reports, timeout=60, what=f"node-1's worker to report its lag on :{metrics_port}")
        lines = [next(ln for ln in scraped if ln.startswith(prefix))
                 for prefix in ("aosk_consumer_lag_records{", "aosk_agents{", "aosk_worker_records_total{")
                 if any(ln.startswith(prefix) for ln in scraped)]
        show(f"GET :{metrics_port}/metrics (node-1's worker) -> {len(scraped)} lines, e.g.")
        for ln in lines[:3]:
            show(f"    {ln}")
        killed = aosk("cluster", "kill", "node-2")
        show(f"aosk cluster kill node-2 (SIGKILL to its process group) -> exit {killed.returncode}")
        answers = [call("GET", f"{url}/api/v1/agents/{agent}", key)[0] for _ in range(6)]
        show(f"6 GETs through nginx with node-2 down -> {answers} (nginx retried them on node-1)")
        show(f"aosk cluster status -> exit {aosk('cluster', 'status').returncode} (1: a node is down)")
        started = aosk("cluster", "start", "node-2")
        show(f"aosk cluster start node-2 -> exit {started.returncode}; "
             f"status -> exit {aosk('cluster', 'status').returncode}")
        show("a Prometheus for it: docs/operations.md \"Cluster on one machine\" (targets written under "
             "<state_dir>/cluster/prometheus/)")
    finally:
        down = aosk("cluster", "down")
        show(f"aosk cluster down -> exit {down.returncode}")


def _section_backup(settings: Settings, ep: Endpoints) -> None:
    _heading("12. backup, verify, and restore into a fresh cluster (other topics, another database)")
    import os

    import psycopg
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:6]
    archive = settings.dev.state_dir.expanduser().resolve() / "demo-backups" / tag
    database = f"aosk_restored_{tag}"
    prefix = f"{settings.kafka.topic_prefix}-restored-{tag}"
    restored_dsn = psycopg.conninfo.make_conninfo(ep.dsn, dbname=database)
    restored_env = {**os.environ, "AOSK_TOPIC_PREFIX": prefix, "AOSK_POSTGRESQL_DSN": restored_dsn}

    def aosk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aosk.cli", *args, *(["--no-progress"] if args[0] == "backup"
                               else [])], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                              env=env)

    def show(line: str) -> None:
        print(f"  {line[:150]}")

    def last_line(done: subprocess.CompletedProcess[str]) -> str:
        return ((done.stdout + done.stderr).strip().splitlines() or ["?"])[-1]

    made = aosk("backup", "create", str(archive))
    show(f"aosk backup create {archive.name} -> exit {made.returncode}: {last_line(made)}")
    if made.returncode != 0:
        return
    size = sum(f.stat().st_size for f in archive.rglob("*") if f.is_file())
    show(f"  {len(list(archive.iterdir()))} files, {size / 1e6:.1f} MB: Avro container files of every record "
         "(partition, offset, timestamp, key, bytes), pg_dump of the API schema, a manifest")
    checked = aosk("backup", "verify", str(archive))
    show(f"aosk backup verify -> exit {checked.returncode}: {last_line(checked)}")
    refused = aosk("backup", "restore", str(archive))
    show(f"aosk backup restore onto this (non-empty) cluster -> exit {refused.returncode}: {last_line(refused)}")
    with psycopg.connect(ep.dsn, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    try:
        with psycopg.connect(restored_dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists vector")
        t0 = time.monotonic()
        restored = aosk("backup", "restore", str(archive), env=restored_env)
        show(f"AOSK_TOPIC_PREFIX={prefix} AOSK_POSTGRESQL_DSN=.../{database} aosk backup restore -> exit "
             f"{restored.returncode} in {time.monotonic() - t0:.1f}s: {last_line(restored)}")
        if restored.returncode == 0:
            before, after = aosk("db", "digest").stdout, aosk("db", "digest", env=restored_env).stdout
            show(f"aosk db digest, the source and the restored cluster: "
                 f"{'identical' if before == after else 'DIFFERENT'} ({len(after.splitlines())} tables)")
            verified = aosk("audit", "verify", "--against-journal", env=restored_env)
            show(f"aosk audit verify --against-journal on the restored cluster -> exit {verified.returncode}")
        show("every record keeps its offset and timestamp, so states, derived ids and deadlines are unchanged "
             "(docs/operations.md \"Backup and restore\")")
    finally:
        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{database}" with (force)')
        admin = AdminClient({"bootstrap.servers": ep.bootstrap})
        ours = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
        if ours:
            for fut in admin.delete_topics(ours).values():
                fut.result(60)


def _section_standby(settings: Settings, ep: Endpoints) -> None:
    _heading("13. a streaming PostgreSQL standby (aosk dev up --standby), then dropped")
    if settings.storage.postgresql.host is not None:
        print("  (the demo runs against your PostgreSQL: see docs/operations.md \"PostgreSQL standby\")")
        return
    import psycopg

    from aosk.devstack.stack import dev_stack
    from aosk.waiting import wait_for

    stack = dev_stack(settings, standby=True)
    assert stack is not None and stack.standby is not None
    t0 = time.monotonic()
    stack.up()
    standby = stack.standby
    print(f"  aosk dev up --standby: pg_basebackup -R of the primary, ready in {time.monotonic() - t0:.1f}s")
    try:
        count = "select count(*) from aosk.audit_log"

        def rows(dsn: str) -> int:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(count).fetchone()
                return int(row[0]) if row else 0

        primary = rows(ep.dsn)
        wait_for(lambda: rows(standby.dsn) == primary, timeout=60, what="the standby to replay the audit log")
        print(f"  audit_log rows: primary {primary}, standby {rows(standby.dsn)} (streamed, asynchronous)")
        with psycopg.connect(standby.dsn) as conn:
            try:
                conn.execute("create table aosk.demo_write (x int)")
                refused = "accepted"
            except psycopg.errors.ReadOnlySqlTransaction:
                refused = "refused: a hot standby is read-only"
        print(f"  a write on the standby -> {refused}")
        ok, text = standby.status()
        print(f"  aosk dev status: pg-standby {'up' if ok else 'DOWN'}  {text}")
        print("  to fail over: aosk dev promote-standby, then AOSK_POSTGRESQL_DSN=<its dsn> (docs/operations.md)")
    finally:
        stack.drop_standby()
        print("  aosk dev drop-standby: stopped, its data and replication slot removed")


def _section_models_and_tools(settings: Settings) -> None:
    _heading("14. models and tools, directly: the stand-in model server (no network)")
    import asyncio
    import json

    from aosk.runtime.builtin_tools import BUILTIN_TOOLS
    from aosk.runtime.models import provider_from_settings
    from aosk.runtime.tools import ToolRegistry, ToolRunner

    task = ("Work out calculator(expression='(17 + 25) * 3') and then "
            "word_count(text='every agent action is an event') for the report.")
    registry = ToolRegistry(BUILTIN_TOOLS).allowed(["calculator", "word_count"])

    async def converse() -> list[list[float]]:
        async with provider_from_settings(settings) as provider:
            print(f"  OpenAI-compatible provider -> {provider.llm.base_url} (model {provider.llm.model}; "
                  "AOSK_LLM_BASE_URL points it at vLLM, Ollama, OpenAI, ...)")
            messages: list[dict[str, object]] = [{"role": "user", "content": task}]
            print(f"  task: {task}")
            with ToolRunner(registry, settings=settings.tools) as runner:
                for _turn in range(6):
                    answer = await provider.chat(messages, tools=registry.openai_tools())
                    if not answer.tool_calls:
                        text = (answer.content or "").replace("\n", " | ")
                        print(f"  model: {text} ({answer.finish_reason}; {answer.prompt_tokens} + "
                              f"{answer.completion_tokens} tokens as the server reported)")
                        break
                    messages.append({"role": "assistant", "content": answer.content, "tool_calls": [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
                        for c in answer.tool_calls]})
                    for call in answer.tool_calls:
                        result = runner.run(call.id, call.name, call.raw_arguments)
                        print(f"  model -> {call.name}({json.dumps(call.arguments)}) -> tool process: "
                              f"{result.content} in {result.duration_s * 1000:.1f} ms")
                        messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
                slow = runner.run("demo-timeout", "calculator", json.dumps({"expression": "9 ** 9 ** 9"}))
                print(f"  a tool that misbehaves is a result, never a dead runtime: "
                      f"{slow.error.kind if slow.error else 'ok'}: {(slow.error.message if slow.error else '')[:80]}")
            return await provider.embed(["the agent stores a memory of the report",
                                         "a memory of the report is stored by the agent",
                                         "kafka partitions scale the consumer group"])

    a, b, c = asyncio.run(converse())
    near, far = sum(x * y for x, y in zip(a, b, strict=True)), sum(x * y for x, y in zip(a, c, strict=True))
    print(f"  embeddings (hashed word n-grams, {len(a)}-d): cosine to a paraphrase {near:.2f}, "
          f"to an unrelated sentence {far:.2f}")


def _section_errors() -> None:
    _heading("15. when a dependency is down: one line and an exit code")
    import os
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AOSK_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
           "AOSK_POSTGRESQL_DSN": f"postgresql://postgres@127.0.0.1:{port}/aosk"}
    out = subprocess.run([sys.executable, "-m", "aosk.cli", "db", "status"], capture_output=True, text=True,
                         env=env, timeout=60)
    message = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(nothing on stderr)"
    print(f"  aosk db status against a closed port exits {out.returncode} (3: unreachable; `aosk --help` lists "
          "every exit code):")
    print(f"    {message[:150]}{'...' if len(message) > 150 else ''}")


SECTIONS: tuple[Callable[[Settings, Endpoints], None], ...] = (_section_smoke, _section_events)


def run_demo(settings: Settings) -> int:
    print("AOSK demo: an event-sourced kernel for AI agents on Kafka and PostgreSQL")
    ep = _section_stack(settings)
    for section in SECTIONS:
        section(settings, ep)
    procs = _Processes(settings)
    try:
        ctx = _section_kernel(settings, ep, procs)
        _section_projections(settings, ep, ctx)
        _section_time_travel(settings, ep, ctx)
        _section_replay(settings, ep)
        _section_quarantine(settings, ep)
        _section_api(settings, ep)
        _section_fleet(settings, ep, procs)
    finally:
        procs.stop()
    _section_cluster(settings)
    _section_backup(settings, ep)
    _section_standby(settings, ep)
    _section_models_and_tools(settings)
    _section_errors()
    _heading("done")
    print("  the stack keeps running; `.venv/bin/aosk dev status` shows it, `.venv/bin/aosk dev down` stops it")
    return 0
