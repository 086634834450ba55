"""``aosk bench cluster``: a load test through nginx against a running ``aosk cluster``,
with one node SIGKILLed whole mid-load and brought back, then the books checked.

Load: ``clients`` closed-loop clients (asyncio, one ``httpx.AsyncClient`` through nginx)
for ``duration_s``. Each client creates an agent with a first task (``POST
/api/v1/agents``), then posts ``events_per_agent`` ``ContextAppended`` events to it, then
the next agent. Every logical request carries its own ``Idempotency-Key`` and is sent
again with the same key and body on a connection error, a timeout, a 5xx, a 429 or a 409
``idempotency-in-progress`` (honouring ``Retry-After``, capped) until it is answered 2xx
(acknowledged) or ``request_deadline_s`` passes. Every attempt is recorded with its time.

At ``kill_at_s`` the node is SIGKILLed with its whole process group (``aosk.cluster.
kill_node``, what ``aosk cluster kill`` runs); ``down_s`` later it is started again
(``start_again``, what ``aosk cluster start`` runs, which waits for its API).

Then, once every acknowledged agent's task has ended and the workers and projectors
have caught up with the journal's end:

- lost: an acknowledged write whose event id is not in the journal;
- doubled: an acknowledged write whose event id has more than one verdict other than
  ``duplicate`` when the journal is folded (a retried write that reached the journal twice
  is one action and one ``duplicate`` record; two judged records would be two actions);
- audit: the projection's ``audit_log`` rows per event id equal the journal's records per
  event id, with one non-duplicate row each;
- tasks: every acknowledged task is in the ``tasks`` projection and ended;
- projections equal the fold: ``aosk db digest`` of the live schema before and after
  ``aosk replay`` rebuilt it from the journal and swapped it in;
- ``aosk audit verify --against-journal`` exits 0.

Latency is per logical request, from its first attempt to its acknowledgement (retries
included); p99 is reported for requests started before the kill, between the kill and the
node's API answering again, and after.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aosk.config import Settings
from aosk.errors import AoskError

__all__ = ["LoadOptions", "LoadResult", "Check", "run_cluster_load", "check_cluster_load", "report_markdown"]

ENDED = ("succeeded", "failed", "cancelled")
_NGINX_ERROR = re.compile(r"\[error\] \d+#\d+: \*\d+ (.*?) while ")
RETRY_AFTER_CAP_S = 2.0
"""At most this long between attempts, whatever ``Retry-After`` says (a lease taken over
by a retry ends sooner than the 30 s lease a dead node's request left)."""


@dataclass(frozen=True)
class LoadOptions:
    duration_s: float = 60.0
    clients: int = 12
    kill_at_s: float = 20.0
    """Seconds into the load; a negative value kills nothing."""
    down_s: float = 5.0
    """Seconds the node stays down before it is started again."""
    after_s: float = 10.0
    """The load goes on at least this long after the node's API answers again (restarting
    a node on a busy machine can take longer than planned)."""
    node: str = "node-2"
    events_per_agent: int = 3
    request_deadline_s: float = 90.0
    timeout_s: float = 10.0
    """Per attempt."""
    tenant: str = "load"
    content_bytes: int = 200


@dataclass
class Attempt:
    at: float
    """Seconds since the load started."""
    outcome: str
    """An HTTP status ("503"), "409-in-progress" or an exception name."""


@dataclass
class Request:
    kind: str
    """"agent" or "event"."""
    key: str
    started: float
    attempts: list[Attempt] = field(default_factory=list)
    acked: float | None = None
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False
    """Some attempt was answered ``Idempotent-Replayed: true``."""

    @property
    def latency(self) -> float:
        assert self.acked is not None
        return self.acked - self.started

    @property
    def retries(self) -> int:
        return len(self.attempts) - 1


@dataclass
class LoadResult:
    options: LoadOptions
    url: str
    requests: list[Request]
    seconds: float
    killed_at: float | None = None
    back_at: float | None = None
    """When the node's API answered again (``start_again`` returned)."""
    killed_processes: int = 0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The machine's load average when the load ended."""
    nginx_errors: Counter[str] = field(default_factory=Counter)
    """nginx's error log during the load, by message: failures of an upstream that nginx
    answered by trying another node (clients never saw them) or passed on as a 502/504."""

    @property
    def acked(self) -> list[Request]:
        return [r for r in self.requests if r.acked is not None]

    @property
    def unacked(self) -> list[Request]:
        return [r for r in self.requests if r.acked is None]

    def window(self, name: str) -> tuple[float, float]:
        if self.killed_at is None or self.back_at is None:
            return (0.0, self.seconds) if name == "before" else (self.seconds, self.seconds)
        return {"before": (0.0, self.killed_at), "during": (self.killed_at, self.back_at),
                "after": (self.back_at, self.seconds)}[name]

    def in_window(self, name: str) -> list[Request]:
        """``before``: answered before the kill; ``during``: in flight at some moment between
        the kill and the node's API answering again; ``after``: started after that."""
        if self.killed_at is None or self.back_at is None:
            return self.requests if name == "before" else []
        k, b = self.killed_at, self.back_at

        def end(r: Request) -> float:
            return r.acked if r.acked is not None else r.attempts[-1].at if r.attempts else r.started

        if name == "before":
            return [r for r in self.requests if end(r) < k]
        if name == "after":
            return [r for r in self.requests if r.started >= b]
        return [r for r in self.requests if end(r) >= k and r.started < b]

    def p99(self, name: str) -> float | None:
        lat = sorted(r.latency for r in self.in_window(name) if r.acked is not None)
        return lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None

    def slowest(self, name: str) -> float | None:
        lat = [r.latency for r in self.in_window(name) if r.acked is not None]
        return max(lat) if lat else None

    def failed_attempts(self, name: str) -> Counter[str]:
        """Failed attempts (not the answered ones) made in the window, by outcome."""
        lo, hi = self.window(name)
        return Counter(a.outcome for r in self.requests for a in r.attempts
                       if lo <= a.at < hi and not a.outcome.startswith("2"))

    def retries(self, name: str) -> int:
        lo, hi = self.window(name)
        return sum(1 for r in self.requests for a in r.attempts[1:] if lo <= a.at < hi)

    def per_s(self, name: str | None = None) -> float:
        lo, hi = (0.0, self.seconds) if name is None else self.window(name)
        n = sum(1 for r in self.acked if r.acked is not None and lo <= r.acked < hi)
        return n / (hi - lo) if hi > lo else 0.0


# --- the load -----------------------------------------------------------------------------


class _Driver:
    def __init__(self, client: httpx.AsyncClient, options: LoadOptions, t0: float) -> None:
        self.client, self.options, self.t0 = client, options, t0
        self.requests: list[Request] = []
        self.stop = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def send(self, kind: str, path: str, body: dict[str, Any]) -> Request:
        req = Request(kind, f"load-{uuid.uuid4()}", self.now())
        self.requests.append(req)
        deadline = req.started + self.options.request_deadline_s
        pause = 0.05
        while True:
            at = self.now()
            wait = pause
            try:
                resp = await self.client.post(path, json=body, headers={"Idempotency-Key": req.key})
            except httpx.HTTPError as e:
                req.attempts.append(Attempt(at, type(e).__name__))
            else:
                if 200 <= resp.status_code < 300:
                    req.attempts.append(Attempt(at, str(resp.status_code)))
                    req.acked, req.status, req.body = self.now(), resp.status_code, resp.json()
                    req.replayed = req.replayed or resp.headers.get("idempotent-replayed") == "true"
                    return req
                retryable = resp.status_code >= 500 or resp.status_code == 429
                outcome = str(resp.status_code)
                if resp.status_code == 409 and "idempotency-in-progress" in resp.text:
                    retryable, outcome = True, "409-in-progress"
                req.attempts.append(Attempt(at, outcome))
                if not retryable:
                    req.status, req.body = resp.status_code, {"problem": resp.text[:500]}
                    return req
                try:
                    wait = min(RETRY_AFTER_CAP_S, max(pause, float(resp.headers.get("retry-after", 0))))
                except ValueError:
                    pass
            if self.now() + wait > deadline:
                return req
            await asyncio.sleep(wait)
            pause = min(1.0, pause * 2)

    async def client_loop(self, n: int) -> None:
        o = self.options
        i = 0
        while not self.stop:
            made = await self.send("agent", "/api/v1/agents", {
                "name": f"load-{n}-{i}", "task": f"load task {n}-{i}: add 2 and 3"})
            i += 1
            if made.acked is None:
                continue
            agent_id = made.body["agent_id"]
            for j in range(o.events_per_agent):
                if self.stop:
                    break
                await self.send("event", f"/api/v1/agents/{agent_id}/events", {"type": "ContextAppended", "payload": {
                    "entry_id": f"e{j}", "role": "user", "content": "x" * o.content_bytes, "tokens": 10,
                    "importance": 0.5}})


async def _load(url: str, api_key: str, options: LoadOptions, kill: Callable[[], int] | None,
                start: Callable[[], None] | None, say: Callable[[str], None]) -> LoadResult:
    limits = httpx.Limits(max_connections=options.clients, max_keepalive_connections=options.clients)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": api_key}, limits=limits,
                                 timeout=options.timeout_s) as client:
        t0 = time.monotonic()
        driver = _Driver(client, options, t0)
        result = LoadResult(options, url, driver.requests, options.duration_s)

        async def chaos() -> None:
            if kill is None or start is None or options.kill_at_s < 0:
                return
            await asyncio.sleep(max(0.0, options.kill_at_s - driver.now()))
            result.killed_at = driver.now()
            result.killed_processes = await asyncio.to_thread(kill)
            say(f"  {driver.now():5.1f}s: {options.node} SIGKILLed whole ({result.killed_processes} processes)")
            await asyncio.sleep(options.down_s)
            say(f"  {driver.now():5.1f}s: starting {options.node} again")
            await asyncio.to_thread(start)
            result.back_at = driver.now()
            say(f"  {driver.now():5.1f}s: {options.node}'s API answers again")

        async def stopper() -> None:
            await asyncio.sleep(options.duration_s)
            while kill is not None and options.kill_at_s >= 0 and (
                    result.back_at is None or driver.now() < result.back_at + options.after_s):
                await asyncio.sleep(0.1)
            driver.stop = True

        tasks = [asyncio.ensure_future(c) for c in (stopper(), chaos())]
        await asyncio.gather(*(driver.client_loop(n) for n in range(options.clients)))
        result.seconds = driver.now()
        await asyncio.gather(*tasks)
        result.loadavg = os.getloadavg()
        return result


def run_cluster_load(settings: Settings, options: LoadOptions, *, api_key: str | None = None,
                     say: Callable[[str], None] = lambda line: print(line, flush=True)) -> LoadResult:
    """Drive the cluster recorded in the state directory through its nginx."""
    from aosk import cluster

    state_dir = settings.dev.state_dir
    record = cluster.load_record(cluster.ClusterPaths.of(state_dir))
    if record is None:
        raise AoskError(f"no cluster recorded in {cluster.ClusterPaths.of(state_dir).root}: `aosk cluster up` first")
    if options.kill_at_s >= 0:
        record.node(options.node)  # an unknown node id is an error before any load
    key = api_key or create_key(settings, options.tenant)

    def kill() -> int:
        return cluster.kill_node(state_dir, options.node)[1]

    def start() -> None:
        cluster.start_again(state_dir, options.node, environ=os.environ, timeout=120.0, say=lambda _: None)

    log = cluster.ClusterPaths.of(state_dir).nginx / "error.log"
    mark = log.stat().st_size if log.exists() else 0
    say(f"load: {options.clients} clients for {options.duration_s:g} s through {record.url}"
        + (f"; {options.node} killed at {options.kill_at_s:g} s for {options.down_s:g} s"
           if options.kill_at_s >= 0 else ""))
    result = asyncio.run(_load(record.url, key, options, kill, start, say))
    if log.exists():
        with open(log, "rb") as f:
            f.seek(mark)
            result.nginx_errors = Counter(m.group(1) for m in _NGINX_ERROR.finditer(f.read().decode(errors="replace")))
    return result


def create_key(settings: Settings, tenant: str) -> str:
    """A write key for ``tenant`` (what ``aosk keys create`` makes)."""
    from aosk.api.keys import KeyStore, ensure_schema
    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.db import connect

    with connect(resolve_endpoints(settings).dsn) as conn:
        ensure_schema(conn, settings.api.schema_name)
        _, secret = KeyStore(conn, settings.api.schema_name).create(tenant_id=tenant, scope="write",
                                                                      name=f"bench-cluster-{tenant}")
    return str(secret)


# --- the checks ---------------------------------------------------------------------------


@dataclass
class Check:
    lost: list[str] = field(default_factory=list)
    """Acknowledged event ids missing from the journal."""
    doubled: list[str] = field(default_factory=list)
    """Acknowledged event ids judged more than once (not as duplicates)."""
    audit_mismatch: list[str] = field(default_factory=list)
    unfinished_tasks: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Requests answered a 4xx that retrying does not change (the load's own mistake)."""
    digest_equal: bool = False
    digest_diff: list[str] = field(default_factory=list)
    audit_verify_rc: int | None = None
    audit_verify_output: str = ""
    journal_records: int = 0
    duplicates: int = 0
    """Journal records of acknowledged writes judged ``duplicate`` (a retry that reached the
    journal again: one action, not two)."""
    verdicts: Counter[str] = field(default_factory=Counter)
    """Kinds of the acknowledged writes' (first) verdicts."""
    tasks: Counter[str] = field(default_factory=Counter)
    settle_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.doubled and not self.audit_mismatch and not self.unfinished_tasks
                and not self.refused and self.digest_equal and self.audit_verify_rc == 0)

    def problems(self) -> list[str]:
        out = []
        for name in ("lost", "doubled", "audit_mismatch", "unfinished_tasks", "refused", "digest_diff"):
            items = getattr(self, name)
            if items:
                out.append(f"{name}: {len(items)} ({', '.join(items[:5])})")
        if self.audit_verify_rc != 0:
            out.append(f"aosk audit verify exited {self.audit_verify_rc}: {self.audit_verify_output[-1000:]}")
        return out


def _acked_ids(result: LoadResult) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(event id -> kind of write, (agent id, task id) -> the creating request's key)."""
    events: dict[str, str] = {}
    tasks: dict[tuple[str, str], str] = {}
    for r in result.acked:
        events[str(r.body["event_id"])] = r.kind
        if r.kind == "agent" and r.body.get("task_id"):
            tasks[(str(r.body["agent_id"]), str(r.body["task_id"]))] = r.key
    return events, tasks


def _task_status(settings: Settings, schema: str, tasks: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    from psycopg import sql

    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.db import connect, qualified

    agents = sorted({a for a, _ in tasks})
    with connect(resolve_endpoints(settings).dsn) as conn:
        rows = conn.execute(sql.SQL("select agent_id, task_id, status from {} where agent_id = any(%s)")
                            .format(qualified(schema, "tasks")), (agents,)).fetchall()
    return {(a, t): s for a, t, s in rows if (a, t) in tasks}


def _caught_up(settings: Settings, schema: str) -> bool:
    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.db import connect
    from aosk.reads.status import projected_offsets
    from aosk.status import broker_offsets
    from aosk.streams.kafka import group_id

    k = settings.kafka
    ends, judged = broker_offsets(resolve_endpoints(settings).bootstrap, k.journal_topic, group_id(k.topic_prefix))
    if judged is None:  # the group coordinator did not answer in time: not known to be caught up
        return False
    with connect(resolve_endpoints(settings).dsn) as conn:
        projected = projected_offsets(conn, schema)
    return all(judged.get(p, 0) >= end and projected.get(p, 0) >= end for p, end in ends.items())


def check_cluster_load(settings: Settings, result: LoadResult, *, schema: str, settle_timeout_s: float = 300.0,
                       say: Callable[[str], None] = lambda line: print(line, flush=True)) -> Check:
    from aosk.bench.follow import read_topic
    from aosk.endpoints import resolve_endpoints
    from aosk.journal import record_from_message
    from aosk.kernel import fold_with_verdicts
    from aosk.projectors.db import connect
    from aosk.projectors.digest import digest_schema
    from aosk.projectors.replay import ReplayOptions, replay, shadow_name
    from aosk.waiting import wait_for

    check = Check()
    check.refused = [f"{r.kind} {r.key}: {r.status} {str(r.body.get('problem'))[:200]}" for r in result.unacked
                     if r.status is not None]
    events, tasks = _acked_ids(result)
    t0 = time.monotonic()
    say(f"settling: {len(tasks)} tasks to end, workers and projectors to reach the journal's end")
    statuses: dict[tuple[str, str], str] = {}

    def tasks_ended() -> bool:
        nonlocal statuses
        statuses = _task_status(settings, schema, tasks)
        return len(statuses) == len(tasks) and all(s in ENDED for s in statuses.values())

    try:
        wait_for(tasks_ended, timeout=settle_timeout_s, interval=1.0, what="every acknowledged task to end")
    except TimeoutError:
        pass  # reported below as unfinished tasks
    try:
        wait_for(lambda: _caught_up(settings, schema), timeout=settle_timeout_s, interval=0.5,
                 what="workers and projectors at the journal's end")
    except TimeoutError as e:
        check.digest_diff.append(str(e))
    check.settle_s = time.monotonic() - t0
    check.tasks = Counter(statuses.values())
    check.unfinished_tasks = [f"{a}/{t}:{statuses.get((a, t), 'missing')}" for a, t in tasks
                              if statuses.get((a, t)) not in ENDED]

    # The journal, folded: every acknowledged write's event id, judged once.
    bootstrap = resolve_endpoints(settings).bootstrap
    records = [record_from_message(m) for m in read_topic(bootstrap, settings.kafka.journal_topic, raw=True)]
    records.sort(key=lambda r: (r.partition, r.offset))
    check.journal_records = len(records)
    _, verdicts = fold_with_verdicts(records)
    kinds: dict[str, list[str]] = defaultdict(list)
    for v in verdicts:
        if v.event_id in events:
            kinds[v.event_id].append(v.kind)
    for event_id in events:
        got = kinds.get(event_id, [])
        judged = [k for k in got if k != "duplicate"]
        check.duplicates += len(got) - len(judged)
        if not got:
            check.lost.append(event_id)
        elif len(judged) != 1:
            check.doubled.append(f"{event_id}:{'/'.join(got)}")
        else:
            check.verdicts[judged[0]] += 1

    # The audit log: as many rows per event id as the journal has records, one judged.
    from psycopg import sql

    from aosk.projectors.db import qualified

    with connect(resolve_endpoints(settings).dsn) as conn:
        rows = conn.execute(sql.SQL("select event_id, count(*), count(*) filter (where kind <> 'duplicate') "
                                    "from {} where event_id = any(%s) group by event_id")
                            .format(qualified(schema, "audit_log")), (list(events),)).fetchall()
    audit = {e: (n, judged) for e, n, judged in rows}
    for event_id in events:
        want = len(kinds.get(event_id, []))
        n, judged = audit.get(event_id, (0, 0))
        if n != want or judged != 1:
            check.audit_mismatch.append(f"{event_id}: {n} rows ({judged} judged), journal {want}")

    # Projections equal the fold: the live digest, then a rebuild from the journal swapped in.
    say("projections vs. the fold: aosk db digest, aosk replay, aosk db digest")
    with connect(resolve_endpoints(settings).dsn) as conn:
        before = digest_schema(conn, schema)
    replay(settings, ReplayOptions(schema=schema, shadow=shadow_name(schema), drop_old=True))
    with connect(resolve_endpoints(settings).dsn) as conn:
        after = digest_schema(conn, schema)
    check.digest_diff += [f"{t}: live {before.get(t)} != replayed {after.get(t)}"
                          for t in sorted(set(before) | set(after)) if before.get(t) != after.get(t)]
    check.digest_equal = not check.digest_diff

    say("aosk audit verify --against-journal")
    verify = subprocess.run([sys.executable, "-m", "aosk.cli", "audit", "verify", "--schema", schema,
                             "--against-journal", "--no-progress"], capture_output=True, text=True, timeout=600)
    check.audit_verify_rc, check.audit_verify_output = verify.returncode, verify.stdout + verify.stderr
    return check


# --- the report ---------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.0f} ms"


def _outcomes(c: Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in c.most_common()) or "none"


def summary_lines(result: LoadResult) -> list[str]:
    o = result.options
    lines = [f"requests: {len(result.requests)} ({len(result.acked)} acknowledged, {len(result.unacked)} not) in "
             f"{result.seconds:.1f} s: {result.per_s():.1f}/s through nginx"]
    for name in ("before", "during", "after"):
        lo, hi = result.window(name)
        if hi <= lo:
            continue
        lines.append(f"  {name:6} {lo:5.1f}-{hi:5.1f} s: {result.per_s(name):6.1f} acknowledged/s, p99 "
                     f"{_ms(result.p99(name))}, slowest {_ms(result.slowest(name))}, retries {result.retries(name)}, "
                     "failed attempts: "
                     f"{_outcomes(result.failed_attempts(name))}")
    if result.killed_at is not None:
        lines.append(f"  {o.node} SIGKILLed at {result.killed_at:.1f} s ({result.killed_processes} processes), "
                     f"its API back at {result.back_at:.1f} s" if result.back_at is not None else "")
    lines.append(f"  nginx's error log: {_outcomes(result.nginx_errors)} (upstream failures it retried on "
                 "another node or answered 5xx)")
    replayed = sum(1 for r in result.acked if r.replayed)
    lines.append(f"  acknowledged by a replayed first answer (Idempotent-Replayed): {replayed}; load average "
                 f"{' '.join(f'{x:.2f}' for x in result.loadavg)}")
    return lines


def check_lines(check: Check) -> list[str]:
    return [
        f"journal: {check.journal_records} records; acknowledged writes judged {_outcomes(check.verdicts)}; "
        f"{check.duplicates} duplicate records of them (retries that reached the journal again)",
        f"lost {len(check.lost)}, doubled {len(check.doubled)}, audit rows off {len(check.audit_mismatch)}, "
        f"tasks {_outcomes(check.tasks)} ({len(check.unfinished_tasks)} not ended), projections "
        f"{'equal' if check.digest_equal else 'DIFFER from'} the fold, audit verify exit {check.audit_verify_rc} "
        f"(settled in {check.settle_s:.1f} s)",
    ]


def _median(xs: list[float | None]) -> float | None:
    vals = sorted(x for x in xs if x is not None)
    return vals[len(vals) // 2] if vals else None


def report_markdown(runs: list[tuple[LoadResult, Check]], machine: str, command: str) -> str:
    """One row per run (each with its own kill) and the median of the runs."""
    o = runs[0][0].options
    windows = ("before", "during", "after")
    rows = []
    for i, (r, c) in enumerate(runs, 1):
        spans = " / ".join(f"{r.window(w)[0]:.0f}-{r.window(w)[1]:.0f}" for w in windows)
        cells = " | ".join(f"{r.per_s(w):.1f} | {_ms(r.p99(w))}" for w in windows)
        rows.append(f"| {i} | {spans} s | {r.per_s():.1f} | {cells} | {_ms(r.slowest('during'))} | "
                    f"{r.retries('during')} | "
                    f"{_outcomes(r.failed_attempts('during'))} | {_outcomes(r.nginx_errors)} | "
                    f"{'pass' if c.ok else 'FAIL'} |")
    if len(runs) > 1:
        cells = " | ".join(f"{_median([r.per_s(w) for r, _ in runs]) or 0:.1f} | "
                           f"{_ms(_median([r.p99(w) for r, _ in runs]))}" for w in windows)
        rows.append(f"| median | | {_median([r.per_s() for r, _ in runs]) or 0:.1f} | {cells} | "
                    f"{_ms(_median([r.slowest('during') for r, _ in runs]))} | "
                    f"{_median([float(r.retries('during')) for r, _ in runs]) or 0:.0f} | | | |")
    details = []
    for i, (r, c) in enumerate(runs, 1):
        replayed = sum(1 for q in r.acked if q.replayed)
        details.append(f"- run {i}: {len(r.requests)} requests, {len(r.acked)} acknowledged, {len(r.unacked)} not "
                       f"by their deadline, {replayed} acknowledged by a replayed answer; {r.killed_processes} "
                       f"processes killed at {r.killed_at or 0:.1f} s, API back at {r.back_at or 0:.1f} s; "
                       f"load average at the end {' '.join(f'{x:.2f}' for x in r.loadavg)}")
        details += [f"  - {line}" for line in check_lines(c)]
    return "\n".join([
        "## Cluster load with a node killed (`aosk bench cluster`)",
        "",
        f"Machine: {machine}, shared with other work (load averages below: the cores were not ours alone).",
        f"Command: `{command}` against `aosk cluster up --nodes 3` on the dev stack.",
        "",
        f"{o.clients} closed-loop clients through nginx for {o.duration_s:g} s (longer when the node's restart "
        f"ends late: the load goes on {o.after_s:g} s after it), each creating an agent with a task then posting "
        f"{o.events_per_agent} `ContextAppended` events, every request with its own Idempotency-Key and retried "
        f"with it; {o.node} SIGKILLed whole (supervisor and children) at {o.kill_at_s:g} s and started again "
        f"{o.down_s:g} s later. Latency is per logical request, from its first attempt to its 2xx (client retries "
        "included). p99 *before*: requests answered before the kill; *during*: requests in flight at some moment "
        "between the kill and the node's API answering again; *after*: requests started after that. Requests/s, "
        "client retries and failed attempts are counted by when they happened in each span; *slowest during*: the "
        "longest such request (one whose key a killed node held waits for the key's lease). nginx errors: upstream "
        "failures in nginx's error log, each retried on another node (keyed POSTs are safe to repeat) unless a "
        "client saw it as a 502/504.",
        "",
        "| run | spans before / during / after | req/s through nginx | before req/s | before p99 | during req/s "
        "| during p99 | after req/s | after p99 | slowest during | client retries during "
        "| failed attempts clients saw during | nginx errors | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *details,
    ])


def command_line(options: LoadOptions) -> str:
    return (f"aosk bench cluster --duration {options.duration_s:g} --clients {options.clients} "
            f"--kill-at {options.kill_at_s:g} --down {options.down_s:g} --node {options.node} "
            f"--events-per-agent {options.events_per_agent}")


def write_requests(result: LoadResult, path: Path) -> None:
    """Every logical request as one JSON line (key, kind, times, attempts, ack)."""
    import json

    with open(path, "w") as out:
        for r in result.requests:
            out.write(json.dumps({"key": r.key, "kind": r.kind, "started": round(r.started, 4),
                                  "acked": None if r.acked is None else round(r.acked, 4), "status": r.status,
                                  "replayed": r.replayed, "attempts": [[round(a.at, 4), a.outcome] for a in r.attempts],
                                  "body": r.body}) + "\n")
