"""``aosk bench project``: journal -> every projection, end to end, next to raw COPY.

The run: a realistic workload (``aosk.workload``: 200 agents, memories with 384-d
embeddings, illegal and undecodable records) goes to a fresh journal topic; N
``aosk project`` processes (already in their consumer group, so no rebalance is timed)
project it into a fresh schema. Timed from the first produced record to the commit of
the last one. Every run is made twice, interleaved: with the memories' vector index
maintained, and with no vector index (what the rest of the pipeline costs); their ratio
is the figure to read. Baseline, same run, same database: the very rows the projectors wrote,
COPYed in one session into a second fresh schema with the same indexes (with and
without the vector index). Also measured in process, on one core: decoding, the kernel's
fold, and building rows and hash chains, per event; and the CPU each component used
during the end-to-end run (from /proc), so the report says where the time goes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aosk.config import Settings
from aosk.endpoints import Endpoints, resolve_endpoints
from aosk.errors import AoskError

INDEX_CHECK_S: Final = 1.0
"""How often the benchmark's projectors look whether the memories' IVFFlat index is
outgrown (``aosk project --memory-index-check``)."""

if TYPE_CHECKING:
    from aosk.workload import Workload


@dataclass
class ProjectResult:
    events: int
    agents: int
    processes: int
    embeddings: int
    e2e_seconds: float
    rows: dict[str, int]
    cpu: dict[str, float]
    per_event_us: dict[str, float]
    copy: dict[str, float] = field(default_factory=dict)
    """name -> seconds for the raw COPY baselines."""
    verified: bool = False
    runs_without_index: list[float] = field(default_factory=list)
    """Seconds of every run with no vector index (the journal written first too)."""
    loads: list[float] = field(default_factory=list)
    """1-minute load average at the start of every pair of runs."""
    live_seconds: float = 0.0
    """The live run: produced and projected at the same time."""
    live_cpu: dict[str, float] = field(default_factory=dict)
    index: str = ""
    """The memories' vector index's definition (its method and options)."""
    runs: list[float] = field(default_factory=list)
    """Seconds of every run with the journal written first (``e2e_seconds`` is their median)."""
    load_before: float = 0.0
    """1-minute load average when the run started (other work on the machine skews it)."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.e2e_seconds

    @property
    def without_index_seconds(self) -> float:
        from statistics import median

        return median(self.runs_without_index) if self.runs_without_index else 0.0

    @property
    def index_ratio(self) -> float:
        """Rate with the vector index maintained / rate with no vector index (same run)."""
        return self.without_index_seconds / self.e2e_seconds if self.runs_without_index else 0.0


INDEX_GOAL = 0.75
"""The pipeline with the vector index maintained / with none, measured in the same run."""

# --- helpers ----------------------------------------------------------------------------


def _cpu_seconds(pids: set[int] | None, match: str | None) -> float:
    """utime+stime of processes (by pid, or whose command line contains ``match``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if pids is not None and int(d.name) not in pids:
                continue
            if match is not None:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if match not in cmd:
                    continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return total


def _stack_pids(state_dir: Path) -> tuple[set[int], set[int]]:
    """(postgres server + backends, kafka broker) pids of the dev stack in ``state_dir``;
    empty sets for an external stack (then only the projectors are attributed)."""
    pg: set[int] = set()
    kafka: set[int] = set()
    try:
        master = int((state_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        pg.add(master)
    except (OSError, ValueError, IndexError):
        master = -1
    marker = str(state_dir.resolve() / "kafka")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if master > 0 and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                pg.add(int(d.name))
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "kafka.Kafka" in cmd and marker in cmd:
                kafka.add(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return pg, kafka


def _machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (user, nice, system, irq), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _read_messages(bootstrap: str, topic: str, total: int) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed", "log_level": 3})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + 120
        while len(out) < total and time.monotonic() < deadline:
            out.extend(m for m in c.consume(10_000, timeout=0.5) if not m.error())
        return sorted(out, key=lambda m: (m.partition(), m.offset()))
    finally:
        c.close()


def _wait_group(bootstrap: str, group: str, members: int, procs: list[subprocess.Popen[bytes]]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AoskError("a projector of the benchmark exited during start-up; see its log")
        try:
            d = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
            if (len(d.members) == members and all(m.assignment.topic_partitions for m in d.members)
                    and str(d.state).upper().endswith("STABLE")):
                return
        except Exception:  # noqa: BLE001 - the group is still forming
            pass
        time.sleep(0.2)
    raise AoskError(f"the {members} projectors did not form a stable consumer group within 120s")


def _stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every projector (a clean stop commits), SIGKILL what outlives ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)


def _projected(conn: Any, schema: str) -> int:
    row = conn.execute(f"select coalesce(sum(next_offset), 0) from {schema}.projector_offsets").fetchone()
    return int(row[0]) if row else 0


# --- the benchmark --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchJournal:
    """A fresh journal topic and projection schema name for one benchmark run, and the
    workload to produce into it (shared by ``bench project`` and ``bench replay``)."""

    endpoints: Endpoints
    settings: Settings
    """The caller's settings with the fresh topic prefix."""
    prefix: str
    schema: str
    load_before: float
    """Load average when the run started (a busy machine skews every figure)."""
    workload: Workload


def fresh_bench_journal(settings: Settings, *, kind: str, events: int, agents: int, seed: int,
                        say: Callable[..., None], workload: Workload | None = None) -> BenchJournal:
    """``workload``: reuse one already generated (else generated from the other arguments)."""
    from aosk.projectors.runner import ensure_journal
    from aosk.workload import generate_workload

    ep = resolve_endpoints(settings)
    run = uuid.uuid4().hex[:8]
    prefix, schema = f"bench-{kind}-{run}", f"bench_{kind}_{run}"
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": prefix, "bootstrap_servers": ep.bootstrap})})
    ensure_journal(ep.bootstrap, s)
    load_before = os.getloadavg()[0]
    if workload is None:
        say(f"workload: {events} events over {agents} agents ...", flush=True)
        workload = generate_workload(agents=agents, events=events, seed=seed, garbage_every=1000)
    return BenchJournal(ep, s, prefix, schema, load_before, workload)


def bench_project(settings: Settings, *, events: int = 200_000, agents: int = 800, processes: int = 2,
                  seed: int = 42, repeat: int = 5, progress: bool = True) -> ProjectResult:
    """Timed runs over the same workload, each into a fresh journal and schema:

    - *journal written first* (the headline): the workload is produced in one Kafka
      transaction while the projectors wait in their group, so they see all of it at
      once when it commits; timed from that commit to the commit of the last record.
      This is the projectors' own rate (producers run on other machines in a cluster).
      Run ``repeat`` times; the run of median duration is reported, with the range
      (on 2 shared cores single runs vary by about 10%). Each run is followed by one
      with no vector index (the memories' vector index dropped first, whatever its kind): the
      ratio of the two medians is what maintaining the vector index costs.
    - *live*: produced and projected at the same time on the same 2 cores, timed from
      the first produced record."""
    if repeat < 1:
        raise AoskError("--repeat must be at least 1")
    say = print if progress else (lambda *a, **k: None)
    bj = fresh_bench_journal(settings, kind="project", events=events, agents=agents, seed=seed, say=say)
    dsn, w = bj.endpoints.dsn, bj.workload
    total = len(w.items)

    def timed(journal: BenchJournal, *, written_first: bool, without_index: bool = False) -> tuple[_Timed, _Checked]:
        t = _timed_projection(settings, journal, processes=processes, written_first=written_first,
                              without_vector_index=without_index, say=say)
        return t, _check(dsn, journal.schema, total)

    def timed_fresh(*, written_first: bool, without_index: bool = False) -> _Timed:
        journal = fresh_bench_journal(settings, kind="project", events=events, agents=agents, seed=seed, say=say,
                                      workload=w)
        try:
            return timed(journal, written_first=written_first, without_index=without_index)[0]
        finally:
            _cleanup(dsn, journal.endpoints.bootstrap, journal.schema, journal.prefix)

    loads = [bj.load_before]
    say(f"run 1/{repeat}: journal written first, then projected ...", flush=True)
    try:
        first, checked = timed(bj, written_first=True)  # its schema stays for the breakdown below
        runs = [first]
        say(f"run 1/{repeat} without the vector index ...", flush=True)
        runs_without = [timed_fresh(written_first=True, without_index=True)]
        for n in range(1, repeat):
            loads.append(os.getloadavg()[0])
            say(f"run {n + 1}/{repeat}: journal written first, then projected ...", flush=True)
            runs.append(timed_fresh(written_first=True))
            say(f"run {n + 1}/{repeat} without the vector index ...", flush=True)
            runs_without.append(timed_fresh(written_first=True, without_index=True))
        median = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
        result = ProjectResult(
            events=total, agents=agents, processes=processes,
            embeddings=sum(1 for i in w.items if getattr(i, "embedding", None) is not None),
            e2e_seconds=median.seconds, rows=checked.rows, cpu=median.cpu, per_event_us={}, verified=True,
            index=checked.index, load_before=bj.load_before, runs=[r.seconds for r in runs],
            runs_without_index=[r.seconds for r in runs_without], loads=loads,
        )
        say("in-process breakdown and raw COPY baseline ...", flush=True)
        _breakdown_and_copy(dsn, bj.schema, _read_messages(bj.endpoints.bootstrap, bj.settings.kafka.journal_topic,
                                                           total), result, settings.memory.embedding_dimension)
    finally:
        _cleanup(dsn, bj.endpoints.bootstrap, bj.schema, bj.prefix)
    say("live run: produced and projected at the same time ...", flush=True)
    live = timed_fresh(written_first=False)
    result.live_seconds, result.live_cpu = live.seconds, live.cpu
    return result


@dataclass(frozen=True)
class _Timed:
    seconds: float
    cpu: dict[str, float]


@dataclass(frozen=True)
class _Checked:
    rows: dict[str, int]
    """table -> rows written."""
    index: str
    """The memories' vector index's definition (its method and options), "" if it was dropped."""


def _timed_projection(settings: Settings, bj: BenchJournal, *, processes: int, written_first: bool,
                      without_vector_index: bool, say: Callable[..., None],
                      at_end: Callable[[list[subprocess.Popen[bytes]], Path], None] | None = None,
                      timeout: float = 900.0) -> _Timed:
    """Start ``processes`` projectors on ``bj``'s fresh schema, produce the workload and
    time until every record is projected (at most ``timeout`` s). ``at_end(processes,
    log directory)`` runs then, before the projectors are stopped."""
    import psycopg

    from aosk.projectors.db import migrate
    from aosk.projectors.memory_index import drop as drop_memory_indexes
    from aosk.workload import produce_workload

    ep, s, prefix, schema, w = bj.endpoints, bj.settings, bj.prefix, bj.schema, bj.workload
    topic = s.kafka.journal_topic
    total = len(w.items)
    with psycopg.connect(ep.dsn) as conn:
        migrate(conn, schema=schema, dimension=settings.memory.embedding_dimension,
                memory_index=settings.memory.index)
        if without_vector_index:
            drop_memory_indexes(conn, schema)
            conn.commit()

    env = dict(os.environ, AOSK_KAFKA_BOOTSTRAP=ep.bootstrap, AOSK_POSTGRESQL_DSN=ep.dsn, AOSK_TOPIC_PREFIX=prefix,
               AOSK_KAFKA_PARTITIONS=str(s.kafka.journal_partitions))
    logdir = Path(tempfile.mkdtemp(prefix="aosk-bench-project-"))
    procs = [
        # the vector index is checked every second (not every 30 s) so the rebuilds a longer
        # run would do as its memories double happen, and are paid for, within this one
        subprocess.Popen([sys.executable, "-m", "aosk.cli", "project", "--schema", schema,
                          "--memory-index-check", str(INDEX_CHECK_S)], env=env,
                         stdout=open(logdir / f"projector-{i}.log", "wb"), stderr=subprocess.STDOUT)
        for i in range(processes)
    ]
    pids = {p.pid for p in procs}
    state_dir = Path(settings.dev.state_dir)

    def cpu(pg: set[int], kafka: set[int]) -> dict[str, float]:
        return {"projectors": _cpu_seconds(pids, None), "postgres": _cpu_seconds(pg, None),
                "kafka": _cpu_seconds(kafka, None), "producer": _cpu_seconds({os.getpid()}, None),
                "machine": _machine_cpu_seconds()}

    poll = None
    ok = False
    try:
        say(f"  starting {processes} projectors (logs in {logdir}) ...", flush=True)
        _wait_group(ep.bootstrap, f"{prefix}.projectors.{schema}", processes, procs)
        poll = psycopg.connect(ep.dsn, autocommit=True)
        if written_first:
            # read_committed projectors see none of it until the single transaction commits
            produce_workload(ep.bootstrap, topic, w.items, transactional_id=f"{prefix}-workload")
        pg0, kafka0 = _stack_pids(state_dir)
        cpu0 = cpu(pg0, kafka0)
        t0 = time.perf_counter()
        if not written_first:
            produce_workload(ep.bootstrap, topic, w.items)
        deadline = time.monotonic() + timeout
        while _projected(poll, schema) < total:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise AoskError(f"projection did not finish; see the logs in {logdir}")
            time.sleep(0.02)
        t1 = time.perf_counter()
        pg1, kafka1 = _stack_pids(state_dir)
        cpu1 = cpu(pg0 | pg1, kafka0 | kafka1)
        if at_end is not None:
            at_end(procs, logdir)
        ok = True
    finally:
        if poll is not None:
            poll.close()
        _stop_all(procs)
        if ok:
            shutil.rmtree(logdir, ignore_errors=True)
    say(f"  {total} events in {t1 - t0:.2f}s: {total / (t1 - t0):,.0f} events/s", flush=True)
    return _Timed(seconds=t1 - t0, cpu=_cpu_split(cpu0, cpu1))


def _cpu_split(c0: dict[str, float], c1: dict[str, float]) -> dict[str, float]:
    d = {k: c1[k] - c0[k] for k in c0}
    machine = d.pop("machine")
    # backends that exited during the run are not counted (their CPU lands in "other")
    d["other processes"] = max(0.0, machine - sum(d.values()))
    return d


def _check(dsn: str, schema: str, events: int) -> _Checked:
    """What a run wrote into ``schema``; raises unless it is one audit row per record and
    ``aosk audit verify`` passes."""
    import psycopg

    from aosk.projectors.memory_index import INDEX_NAMES
    from aosk.reads.audit import verify

    with psycopg.connect(dsn) as conn:
        rows = {t: int(conn.execute(f"select count(*) from {schema}.{t}").fetchone()[0])  # type: ignore[index]
                for t in ("audit_log", "agent_state", "checkpoints", "memories")}
        verified = verify(conn, schema).ok
        found = conn.execute("select indexdef from pg_indexes where schemaname = %s and indexname = any(%s)",
                             (schema, list(INDEX_NAMES.values()))).fetchone()
    if rows["audit_log"] != events or not verified:
        raise AoskError(f"benchmark projection is wrong: {rows}, verify ok={verified}")
    return _Checked(rows, found[0].split(" USING ", 1)[-1] if found else "")


def _breakdown_and_copy(dsn: str, schema: str, msgs: list[Any], result: ProjectResult, dim: int) -> None:

    import psycopg
    from psycopg.types.json import Jsonb

    from aosk.journal import record_from_message
    from aosk.kernel import fold_with_verdicts
    from aosk.projectors.batch import fold_batch
    from aosk.projectors.db import migrate, qualified
    from aosk.projectors.memory import MemoryChanges
    from aosk.projectors.memory_index import drop as drop_memory_indexes
    from aosk.projectors.rows import (
        AGENT_COLUMNS,
        AGENT_TYPES,
        AUDIT_COLUMNS,
        AUDIT_TYPES,
        CHECKPOINT_COLUMNS,
        CHECKPOINT_TYPES,
        MEMORY_COLUMNS,
        memory_types,
    )
    from aosk.projectors.writer import prepare_connection

    n = len(msgs)
    from aosk._gc import tune_gc

    tune_gc()  # as the projector runs
    t = time.perf_counter()
    records = [record_from_message(m) for m in msgs]
    result.per_event_us["decode (codec)"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    fold_with_verdicts(records)
    result.per_event_us["fold (kernel apply, hashing every state)"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    fold_with_verdicts(records, hash_state=False)
    result.per_event_us["fold (kernel apply, hash_state=False, as projectors run it)"] = (
        (time.perf_counter() - t) / n * 1e6
    )
    cache: dict[str, Any] = {}
    audit: list[Any] = []
    cps: list[Any] = []
    mem = MemoryChanges()
    t = time.perf_counter()
    for i in range(0, n, 5000):
        parts: dict[int, list[Any]] = {}
        for r in records[i : i + 5000]:
            parts.setdefault(r.partition, []).append(r)
        b = fold_batch(parts, cache.get, checkpoint_every=100)
        cache.update(b.entries)
        audit.extend(o.audit for o in b.outcomes)
        cps.extend(o.checkpoint for o in b.outcomes if o.checkpoint is not None)
        for o in b.outcomes:
            if o.memory:
                mem.add(o.memory)
    agent_rows = [e.row() for e in cache.values()]
    result.per_event_us["projector: fold + chain links + rows (fold_batch)"] = (time.perf_counter() - t) / n * 1e6

    meta = MEMORY_COLUMNS.index("metadata")
    mem_rows = [[*r[:meta], Jsonb(r[meta]), *r[meta + 1 :]] for r in mem.full.values()]
    for variant, indexed in (("all", True), ("no_vector_index", False)):
        target = f"{schema}_copy_{variant}"
        with psycopg.connect(dsn) as conn:
            migrate(conn, schema=target, dimension=dim)
            if not indexed:
                drop_memory_indexes(conn, target)
                conn.commit()
            oid = prepare_connection(conn, target)
            tables = (
                ("audit_log", AUDIT_COLUMNS, AUDIT_TYPES, audit),
                ("checkpoints", CHECKPOINT_COLUMNS, CHECKPOINT_TYPES, cps),
                ("memories", MEMORY_COLUMNS, memory_types(oid), mem_rows),
                ("agent_state", AGENT_COLUMNS, AGENT_TYPES, agent_rows),
            )
            total = 0.0
            for name, cols, types, rows in tables:
                t = time.perf_counter()
                with conn.cursor() as cur:
                    stmt = psycopg.sql.SQL("copy {} ({}) from stdin (format binary)").format(
                        qualified(target, name), psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in cols)
                    )
                    with cur.copy(stmt) as cp:
                        cp.set_types(types)
                        for row in rows:
                            cp.write_row(row)
                conn.commit()
                dt = time.perf_counter() - t
                total += dt
                if variant == "all":
                    result.copy[f"copy {name}"] = dt
            result.copy[f"copy {variant}"] = total


def _cleanup(dsn: str, bootstrap: str, schema: str, prefix: str) -> None:
    import psycopg
    from confluent_kafka.admin import AdminClient

    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in (schema, f"{schema}_copy_all", f"{schema}_copy_no_vector_index"):
            conn.execute(f"drop schema if exists {s} cascade")
    topics = [f"{prefix}.agent-events", f"{prefix}.agent-transitions", f"{prefix}.dead-letters"]
    for fut in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics).values():
        try:
            fut.result(30)
        except Exception:  # noqa: BLE001 - a leftover benchmark topic is harmless
            pass


def report_markdown(r: ProjectResult, machine: str) -> str:
    e = r.events
    rows = sum(r.rows.values())
    all_s, no_index_s = r.copy["copy all"], r.copy["copy no_vector_index"]
    cpu_total = sum(v for k, v in r.cpu.items() if k != "other processes")
    title = "## Project: journal -> every projection, end to end"
    index = (f"memories with 384-d embeddings clustered around 64 topics (`{r.index}` at the end of the last run; "
             f"the projectors look every {INDEX_CHECK_S:g} s whether an IVFFlat index is outgrown and build it again)")
    wo = r.without_index_seconds
    goal = "met" if r.index_ratio >= INDEX_GOAL else "**not met**"
    lines = [
        title,
        "",
        f"`aosk bench project --events {e} --agents {r.agents} --processes {r.processes} "
        f"--repeat {len(r.runs)}` on {machine}; "
        f"the embedded dev stack (one broker, 12 partitions; PostgreSQL 18 + pgvector 0.8). Workload: "
        f"`aosk.workload`, {r.embeddings} {index}, "
        "illegal and undecodable records; load average at the start of each pair of runs: "
        + ", ".join(f"{x:.2f}" for x in (r.loads or [r.load_before])) + ". "
        f"Rows written: {r.rows['audit_log']:,} audit, {r.rows['memories']:,} "
        f"memories, {r.rows['checkpoints']:,} checkpoints, {r.rows['agent_state']:,} agent states "
        f"({rows:,} in all); `aosk audit verify` passed on the result of every run.",
        "",
        "| what | seconds | events/s |",
        "|---|---:|---:|",
        f"| AOSK: {r.processes} `aosk project` processes, journal written first: consume + decode + fold + all "
        f"projections, exactly once (median of {len(r.runs)} runs) | {r.e2e_seconds:.2f} | "
        f"**{e / r.e2e_seconds:,.0f}** |",
        f"| AOSK, the same with no vector index (the vector index dropped; median of {len(r.runs_without_index)} "
        f"runs, each right after one of the above) | {wo:.2f} | {e / wo:,.0f} |",
        f"| AOSK live: the same while the workload is produced on the same 2 cores | {r.live_seconds:.2f} | "
        f"{e / r.live_seconds:,.0f} |",
        f"| baseline: raw COPY of the same {rows:,} rows, one session, same indexes (incl. the vector index) | "
        f"{all_s:.2f} | {e / all_s:,.0f} |",
        f"| baseline: raw COPY of the same rows without the vector index | {no_index_s:.2f} | {e / no_index_s:,.0f} |",
        f"| of which raw COPY of the {r.rows['audit_log']:,} audit rows | {r.copy['copy audit_log']:.2f} | "
        f"{e / r.copy['copy audit_log']:,.0f} |",
        f"| of which raw COPY of the {r.rows['memories']:,} memory rows (vector index) | "
        f"{r.copy['copy memories']:.2f} | "
        f"{e / r.copy['copy memories']:,.0f} |",
        "",
        "Runs with the journal written first: "
        + ", ".join(f"{e / x:,.0f}" for x in r.runs) + " events/s; with no vector index: "
        + ", ".join(f"{e / x:,.0f}" for x in r.runs_without_index) + " events/s. "
        f"With the vector index maintained / with no vector index, same run: **{r.index_ratio:.2f}x** (goal: at "
        f"least {INDEX_GOAL}x, {goal}). "
        f"AOSK (median run) / raw COPY of the same rows with the same indexes: **{all_s / r.e2e_seconds:.2f}x**.",
        "",
        "Where the time goes, per event:",
        "",
        "| step (measured in process, one core) | µs/event |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in r.per_event_us.items()],
        "",
        f"CPU used during the run with the journal written first (2 cores x {r.e2e_seconds:.1f}s = "
        f"{2 * r.e2e_seconds:.1f} core-s available): " + ", ".join(f"{k} {v:.1f}s" for k, v in r.cpu.items())
        + f" (AOSK's total {cpu_total:.1f}s, i.e. {cpu_total / e * 1e6:.0f} µs of CPU per event; \"other processes\" "
        "is work on the machine unrelated to the run, which slows it down). During the live run: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in r.live_cpu.items()) + ".",
        "",
        "See docs/projections.md (Performance) for what bounds it.",
    ]
    return "\n".join(lines) + "\n"
