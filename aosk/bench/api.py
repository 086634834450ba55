"""``aosk bench api``: authenticated ``POST /api/v1/agents/{id}/events`` through ``aosk api``,
next to a bare FastAPI endpoint measured in the same run.

Three targets, each served by uvicorn with the same number of worker processes
(``aosk.bench.bare`` is the baseline: one POST route parsing a JSON body of the same
size, nothing else):

1. the bare endpoint;
2. ``aosk api`` with no worker and no projector running (the API and the broker only);
3. the same ``aosk api`` with an ``aosk worker`` and an ``aosk project`` running
   (started, then waited for until they have caught up on what phase 2 wrote).

Each request carries an API key, a unique ``Idempotency-Key`` and a ~1 KB
``ContextAppended`` (its ``content`` pads the body) for one agent the bench created
through the API. For each target:

- maximum accepted requests/s in a closed loop: ``wrk`` (one thread) with N keep-alive
  connections for each N of ``connections``, then the best N again until ``repeat``
  runs; the median of those is reported. wrk's CPU share is reported with it;
- p50/p99 latency at half that rate in an open loop (``aosk.bench.openloop``: requests
  due on schedule, latency from the due time).

Everything runs on the dev stack (``aosk dev up``) with a fresh topic prefix and
projection schema, both removed at the end; keys go into the API's own schema.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aosk.bench.openloop import OpenLoopResult, open_loop
from aosk.bench.wrk import ClosedRun, closed_loop
from aosk.config import Settings
from aosk.errors import AoskError

__all__ = ["ApiBenchResult", "Target", "bench_api", "report_markdown"]

CONTENT_BYTES = 900
"""Padding of each event's ``content``: with the rest, a body of about 1 KB."""
HOST = "127.0.0.1"


@dataclass
class Target:
    name: str
    closed: list[ClosedRun] = field(default_factory=list)
    """Every closed-loop run: the sweep, then the repeats at the best N."""
    best_connections: int = 0
    machine_busy: float = 0.0
    """Share of the machine's cores busy (all processes) during the closed-loop runs."""
    server_cpu: float = 0.0
    """CPU seconds of the server's processes (uvicorn and its workers) over the closed-loop runs."""
    accepted: int = 0
    """Requests accepted over the closed-loop runs."""
    open: OpenLoopResult | None = None

    @property
    def max_per_s(self) -> float:
        runs = sorted(r.per_s for r in self.closed if r.connections == self.best_connections)
        return runs[len(runs) // 2]

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per accepted request: unlike requests/s, hardly moved by other
        processes competing for the cores."""
        return self.server_cpu / max(1, self.accepted) * 1e6

    @property
    def wrk_cpu_share(self) -> float:
        return max(r.cpu_share for r in self.closed)


@dataclass
class ApiBenchResult:
    workers: int
    duration: float
    open_seconds: float
    repeat: int
    connections: tuple[int, ...]
    body_bytes: int
    load_before: float
    bare: Target
    idle: Target
    running: Target
    options: str = ""

    def ratio(self, t: Target) -> float:
        return t.max_per_s / self.bare.max_per_s


def _body_template() -> str:
    """The request body with ``%s`` for the request's unique key (wrk's and ours)."""
    payload = {"entry_id": "__KEY__", "role": "user", "content": "x" * CONTENT_BYTES, "tokens": 50,
               "importance": 0.5}
    return json.dumps({"type": "ContextAppended", "payload": payload}).replace("__KEY__", "%s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool], what: str) -> Iterator[
        subprocess.Popen[bytes]]:
    from aosk.waiting import wait_for

    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            raise AoskError(f"{what} exited with status {proc.returncode}; see {log}")
        return ready()

    try:
        wait_for(up, timeout=90, what=what)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _answers(url: str) -> Callable[[], bool]:
    import httpx

    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _server_stack() -> str:
    """What uvicorn picks with its defaults (``auto``): uvloop and httptools when installed."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop} + {http}"


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants (uvicorn's worker processes)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _measure(target: Target, server: int, port: int, path: str, headers: dict[str, str], *,
             connections: tuple[int, ...], duration: float, repeat: int, open_seconds: float,
             say: Callable[..., None]) -> None:
    from aosk.bench.project import _cpu_seconds, _machine_cpu_seconds

    url = f"http://{HOST}:{port}{path}"
    body = _body_template()
    run = uuid.uuid4().hex[:8]
    pids = _process_tree(server)
    busy0, t0, cpu0 = _machine_cpu_seconds(), time.monotonic(), _cpu_seconds(pids, None)
    for n in connections:
        r = closed_loop(url, body_template=body, headers=headers, connections=n, seconds=duration,
                        run=f"{run}-c{n}")
        target.closed.append(r)
        say(f"  closed loop, {n} connections: {r.per_s:,.0f} accepted/s ({r.requests - r.accepted} refused), "
            f"wrk {r.cpu_share:.0%} of a core", flush=True)
    best = max(target.closed, key=lambda r: r.per_s)
    target.best_connections = best.connections
    for i in range(repeat - 1):
        r = closed_loop(url, body_template=body, headers=headers, connections=best.connections, seconds=duration,
                        run=f"{run}-r{i}")
        target.closed.append(r)
        say(f"  closed loop, {best.connections} connections again: {r.per_s:,.0f} accepted/s", flush=True)
    target.machine_busy = (_machine_cpu_seconds() - busy0) / (time.monotonic() - t0) / (os.cpu_count() or 1)
    target.server_cpu = _cpu_seconds(pids, None) - cpu0
    target.accepted = sum(r.accepted for r in target.closed)
    say(f"  server CPU {target.cpu_us_per_request:,.0f} µs per accepted request, machine "
        f"{target.machine_busy:.0%} busy", flush=True)
    rate = target.max_per_s / 2
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    def make_request(i: int) -> bytes:
        key = f"{run}-o-{i}"
        data = (body % key).encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n{extra}"
                f"Idempotency-Key: {key}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data

    say(f"  open loop at {rate:,.0f}/s for {open_seconds:g} s ...", flush=True)
    target.open = o = open_loop(HOST, port, make_request, rate=rate, seconds=open_seconds)
    say(f"  p50 {o.percentile(0.5) * 1000:.1f} ms, p99 {o.percentile(0.99) * 1000:.1f} ms "
        f"({o.errors} errors, generator at most {o.lag_max * 1000:.0f} ms late, {o.connections} connections)",
        flush=True)


def bench_api(settings: Settings, *, workers: int = 2, duration: float = 5.0, repeat: int = 3,
              connections: tuple[int, ...] = (16, 64), open_seconds: float = 10.0,
              progress: bool = True) -> ApiBenchResult:
    """Measure the three targets (module docstring)."""
    import httpx
    import psycopg

    from aosk.api.keys import KeyStore, ensure_schema
    from aosk.bench.bare import BARE_PATH
    from aosk.bench.follow import worker_env
    from aosk.bench.project import _cleanup
    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.runner import ensure_journal
    from aosk.waiting import wait_for

    if repeat < 1 or duration <= 0 or open_seconds <= 0 or not connections:
        raise AoskError("--repeat must be at least 1, --duration and --open-seconds positive")
    say = print if progress else (lambda *a, **k: None)
    ep = resolve_endpoints(settings)
    run = uuid.uuid4().hex[:8]
    prefix, schema = f"bench-api-{run}", f"bench_api_{run}"
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": prefix, "bootstrap_servers": ep.bootstrap})})
    s = s.model_copy(update={"storage": s.storage.model_copy(update={"postgresql": s.storage.postgresql.model_copy(
        update={"dsn": ep.dsn})})})
    ensure_journal(ep.bootstrap, s)
    load_before = os.getloadavg()[0]
    logdir = Path(tempfile.mkdtemp(prefix="aosk-bench-api-"))
    env = worker_env(s, logdir)
    ok = False
    result = ApiBenchResult(workers=workers, duration=duration, open_seconds=open_seconds, repeat=repeat,
                            connections=connections, body_bytes=len(_body_template() % ("k" * 24)),
                            load_before=load_before, bare=Target("bare"), idle=Target("idle"),
                            running=Target("running"), options=_server_stack())
    measure = dict(connections=connections, duration=duration, repeat=repeat, open_seconds=open_seconds, say=say)
    try:
        say(f"bare FastAPI endpoint, uvicorn with {workers} workers ...", flush=True)
        port = _free_port()
        with _process([sys.executable, "-m", "uvicorn", "--factory", "aosk.bench.bare:create_bare_app",
                       "--host", HOST, "--port", str(port), "--workers", str(workers), "--log-level",
                       "warning"], env, logdir / "bare.log",
                      _answers(f"http://{HOST}:{port}/openapi.json"), "the bare endpoint") as bare:
            _measure(result.bare, bare.pid, port, BARE_PATH, {"X-API-Key": "unused"},
                     **measure)  # type: ignore[arg-type]

        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            ensure_schema(conn, settings.api.schema_name)
            _, key = KeyStore(conn, settings.api.schema_name).create(tenant_id=f"bench-{run}", scope="write",
                                                                    name="aosk bench api")
        port = _free_port()
        with _process([sys.executable, "-m", "aosk.cli", "api", "--host", HOST, "--port", str(port),
                       "--workers", str(workers), "--log-level", "warning"], env, logdir / "api.log",
                      _answers(f"http://{HOST}:{port}/health"), "aosk api") as api:
            base = f"http://{HOST}:{port}"
            made = httpx.post(base + "/api/v1/agents", json={"name": "bench"}, headers={"X-API-Key": key},
                              timeout=30)
            if made.status_code != 202:
                raise AoskError(f"creating the bench's agent: {made.status_code} {made.text}")
            path = f"/api/v1/agents/{made.json()['agent_id']}/events"
            headers = {"X-API-Key": key}
            say(f"aosk api, {workers} workers, no worker or projector running ...", flush=True)
            _measure(result.idle, api.pid, port, path, headers, **measure)  # type: ignore[arg-type]

            say("starting aosk worker and aosk project, waiting until they have caught up ...", flush=True)
            with _kernel(s, env, schema, logdir):
                def judged() -> bool:
                    r = httpx.post(base + path + "?wait=verdict", headers=headers, timeout=30, json={
                        "type": "ContextAppended", "payload": {"entry_id": "probe", "role": "user", "content": "p",
                                                               "tokens": 1, "importance": 0.5}})
                    return r.status_code != 202  # 200 or a rejection: a verdict came within 10 s

                wait_for(judged, timeout=600, what="the worker to judge the events phase 2 wrote")
                _wait_projected(ep.dsn, schema, s, timeout=600)
                say(f"aosk api, {workers} workers, with aosk worker and aosk project running ...", flush=True)
                _measure(result.running, api.pid, port, path, headers, **measure)  # type: ignore[arg-type]
        ok = True
        return result
    finally:
        _cleanup(ep.dsn, ep.bootstrap, schema, prefix)
        if ok:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            say(f"logs kept in {logdir}")


@contextmanager
def _kernel(s: Settings, env: dict[str, str], schema: str, logdir: Path) -> Iterator[None]:
    """One ``aosk worker`` and one ``aosk project`` (projection ``schema``), stopped on exit."""
    from aosk.bench.project import _stop_all

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in (("worker", ["worker", "--node-id", "bench-api"]), ("project", ["project", "--schema",
                                                                                          schema])):
            with open(logdir / f"{name}.log", "wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "aosk.cli", *argv], env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        yield
        for p in procs:
            if p.poll() is not None:
                raise AoskError(f"a bench process exited with status {p.returncode}; see {logdir}")
    finally:
        _stop_all(procs, timeout=30)


def _wait_projected(dsn: str, schema: str, s: Settings, *, timeout: float) -> None:
    """Until the projector has committed everything in the journal."""
    import psycopg
    from confluent_kafka import Consumer, TopicPartition
    from psycopg import sql

    from aosk.waiting import wait_for

    c = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": f"bench-api-{uuid.uuid4().hex}",
                  "isolation.level": "read_committed", "log_level": 3})
    try:
        topic = s.kafka.journal_topic
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        end = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()

    query = sql.SQL("select coalesce(sum(next_offset), 0) from {}").format(
        sql.Identifier(schema, "projector_offsets"))

    def projected() -> bool:
        try:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedTable:
            return False
        return row is not None and int(row[0]) >= end

    wait_for(projected, timeout=timeout, interval=0.5, what="the projector to catch up")


def _ms(seconds: float) -> str:
    return "∞" if seconds == float("inf") else f"{seconds * 1000:.1f}"


def report_markdown(r: ApiBenchResult, machine: str, command: str) -> str:
    rows = []
    for label, t in (("bare FastAPI endpoint (baseline)", r.bare),
                     ("`aosk api`, no worker or projector running", r.idle),
                     ("`aosk api`, `aosk worker` + `aosk project` running", r.running)):
        o = t.open
        assert o is not None
        runs = ", ".join(f"{x.per_s:,.0f}" for x in t.closed)
        rows.append(f"| {label} | {t.best_connections} | **{t.max_per_s:,.0f}** | {r.ratio(t):.2f} | "
                    f"{o.offered:,.0f} | {_ms(o.percentile(0.5))} | **{_ms(o.percentile(0.99))}** | "
                    f"{o.lag_max * 1000:,.0f} | "
                    f"{o.errors + sum(v for k, v in o.statuses.items() if not 200 <= k < 300)} | "
                    f"{t.cpu_us_per_request:,.0f} | {r.bare.cpu_us_per_request / t.cpu_us_per_request:.2f} | "
                    f"{t.wrk_cpu_share:.0%} / {o.cpu / (o.seconds + 1):.0%} | {t.machine_busy:.0%} | {runs} |")
    goal_ratio = all(r.ratio(t) >= 0.35 for t in (r.idle, r.running))
    goal_p99 = all(t.open is not None and t.open.percentile(0.99) < 0.05 for t in (r.idle, r.running))
    return (
        "## API: authenticated `POST /api/v1/agents/{id}/events`\n\n"
        f"`{command}` on {machine}; load average {r.load_before:.2f} when the run started (other users of the "
        f"machine count). Each target is uvicorn with {r.workers} worker processes ({r.options}), access log off; "
        f"the embedded dev stack (one broker, PostgreSQL). Every request: an API key, a unique "
        f"`Idempotency-Key`, a {r.body_bytes}-byte `ContextAppended` body for one agent. Closed loop: `wrk -t1` "
        f"with {', '.join(map(str, r.connections))} connections for {r.duration:g} s each, the best repeated to "
        f"{r.repeat} runs, median reported. Open loop: `aosk.bench.openloop` at half that rate for "
        f"{r.open_seconds:g} s (after 1 s of warm-up), latency from each request's due time.\n\n"
        "| target | conns | max accepted/s | ratio | open loop /s | p50 ms | p99 ms | generator late, max ms | failed "
        "| server CPU µs/request "
        "| CPU ratio (bare / this) | load gen CPU (wrk / open loop, of a core) | machine busy | closed-loop runs /s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n" + "\n".join(rows) + "\n\n"
        "Server CPU per request counts the uvicorn processes only (not the broker or PostgreSQL); with other "
        "processes competing for the 2 cores it moves much less than requests/s, so its ratio is the steadier "
        "measure of the API's cost next to the bare endpoint. *Generator late*: how late the open-loop "
        "generator sent a request at worst; where it is large, the generator did not get the CPU to keep its "
        "schedule and the percentiles measure the machine's contention more than the server.\n\n"
        f"Goals: at least 0.35x the bare endpoint's maximum ({'met' if goal_ratio else 'missed'}); p99 under "
        f"50 ms at half load ({'met' if goal_p99 else 'missed'}).\n"
    )
