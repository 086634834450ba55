"""The benchmarks stay runnable: ``aosk bench project``, ``aosk bench replay``, ``aosk bench runtime``,
``aosk bench worker`` and ``aosk bench api`` at a small size on the real stack produce a verified projection
(or every verdict) and a report. (Their figures
are not asserted: speed targets live in docs/benchmarks.md, never in timed tests.)"""

from __future__ import annotations

import pytest

from aosk.bench.api import bench_api
from aosk.bench.api import report_markdown as api_report
from aosk.bench.project import bench_project
from aosk.bench.project import report_markdown as project_report
from aosk.bench.replay import bench_replay
from aosk.bench.replay import report_markdown as replay_report
from aosk.bench.worker import bench_worker
from aosk.bench.worker import report_markdown as worker_report
from aosk.config import Settings

pytestmark = pytest.mark.integration


def test_bench_project_small(settings: Settings) -> None:
    r = bench_project(settings, events=2_000, agents=20, processes=2, repeat=2, progress=False)
    assert r.verified
    assert r.rows["audit_log"] == r.events
    assert r.e2e_seconds in r.runs and len(r.runs) == 2 and r.live_seconds > 0
    assert len(r.runs_without_index) == 2 and r.without_index_seconds > 0 and r.index_ratio > 0
    assert len(r.loads) == 2
    assert "ivfflat" in r.index  # the default memory index, found by name
    text = project_report(r, "test machine")
    assert "journal written first" in text and "AOSK live" in text and "no vector index" in text


def test_bench_replay_small(settings: Settings) -> None:
    r = bench_replay(settings, events=2_000, agents=20, processes=2, batch_max=500, replay_processes=2, repeat=1,
                     progress=False)
    assert r.digests_equal
    assert len(r.live_runs) == len(r.rebuild_runs) == len(r.limit_runs) == len(r.loads) == 1
    assert r.rows["audit_log"] == r.events and r.indexes > 5 and "ivfflat" in r.vector_index
    assert min(r.limit_runs[0].copy_s, r.limit_runs[0].index_s) > 0
    text = replay_report(r, "test machine")
    assert "Rebuild / live" in text and "Rebuild / limit" in text


def test_bench_worker_small(settings: Settings, tmp_path) -> None:
    import math

    from aosk.bench.plot import have_matplotlib, latency_plot
    from aosk.bench.report import write_section

    r = bench_worker(settings, events=2_000, agents=20, repeat=1, rates=(200,), latency_seconds=3, progress=False)
    one, two = r.median(1), r.median(2)
    assert one.records >= r.events and two.records == one.records  # the workload plus derived records
    assert one.seconds > 0 and two.seconds > 0 and one.worker_cpu > 0
    assert one.journal_bytes > 0 and one.snapshot_bytes > 0
    assert r.fold is not None and r.fold.records == one.records
    assert r.passthrough is not None and r.passthrough.records == one.records and r.passthrough.seconds > 0
    (lt,) = r.latency
    assert lt.offered == 200 and lt.sent > 0 and lt.missing == 0 and 0 < lt.p50 <= lt.p90 <= lt.p99 < math.inf
    assert lt.journal_bytes > 0 and lt.snapshot_bytes > 0

    out = tmp_path / "benchmarks.md"
    plot = tmp_path / "worker-latency.png"
    drawn = latency_plot(r, plot, title="test")
    assert drawn == have_matplotlib() and plot.exists() == drawn
    text = worker_report(r, "test machine", plot="worker-latency.png" if drawn else None)
    write_section(out, "worker", text)
    written = out.read_text()
    for field in ("<!-- bench:worker -->", "aosk bench worker --events", "test machine", "1 worker / in-process fold",
                  "2 workers / 1 worker", "1 worker / pass-through", "p99 ms", "snapshot bytes / journal byte",
                  "CPU µs/record", "one worker process"):
        assert field in written, field
    assert ("worker-latency.png" in written) == drawn


def test_bench_api_tiny(settings: Settings) -> None:
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    r = bench_api(settings, duration=1, repeat=1, connections=(4,), open_seconds=1, progress=False)
    for t in (r.bare, r.idle, r.running):
        assert t.max_per_s > 0 and t.best_connections == 4, t
        assert t.open is not None and t.open.latencies and t.open.errors == 0, t.open
        assert set(t.open.statuses) == {202}, t.open.statuses  # every request accepted
    text = api_report(r, "test machine", "aosk bench api --duration 1")
    for field in ("aosk bench api --duration 1", "test machine", "bare FastAPI endpoint", "p99 ms", "Goals"):
        assert field in text, field


def test_bench_runtime_tiny(settings: Settings) -> None:
    from aosk.bench.runtime import bench_runtime
    from aosk.bench.runtime import report_markdown as runtime_report

    r = bench_runtime(settings, agents=6, tasks_per_agent=1, delay_ms=100, repeat=1, progress=False)
    (o,), (x,), (b,) = r.overhead, r.rate, r.baseline
    for run in (o, x):
        assert run.failed == 0 and run.steps == 6 * 5 and run.model_calls == 12 and run.records == 6 * 8, run
        assert run.seconds > 0 and len(run.gaps_ms) == 6 * 4 and all(g >= 0 for g in run.gaps_ms)
    assert b.records > x.records and b.per_s > 0
    text = runtime_report(r, "test machine", "aosk bench runtime --agents 6")
    for field in ("aosk bench runtime --agents 6", "test machine", "p99 ms", "baseline records/s", "Goal"):
        assert field in text, field


def test_bench_reads_tiny(settings: Settings) -> None:
    from aosk.bench.reads import bench_reads
    from aosk.bench.reads import report_markdown as reads_report

    r = bench_reads(settings, agents=3, events_per_agent=300, samples=30, journal_samples=5, repeat=1,
                    checkpoint_every=50, progress=False)
    assert r.equal == 5  # the journal's answer equals PostgreSQL's at every checked point
    assert r.checkpoint_every == 50 and r.max_folded < 50
    assert 0 < r.state_at.p50_ms <= r.state_at.p99_ms and 0 < r.latest.p50_ms <= r.latest.p99_ms
    text = reads_report(r, "test machine")
    assert "aosk bench reads --agents 3" in text and "--checkpoint-every 50" in text
    assert "| `state_at`, PostgreSQL |" in text


def test_bench_growth_small(settings: Settings, tmp_path) -> None:
    from aosk.bench.growth import bench_growth, growth_plot
    from aosk.bench.growth import report_markdown as growth_report
    from aosk.bench.plot import have_matplotlib

    # one process and two sizes (the --compare-untuned settings are exercised by test_agent_state_storage)
    # idle_timeout=0: the sizes after the projectors' upkeep when idle are measured at once
    r = bench_growth(settings, sizes=(300, 600), events_per_agent=100, processes=1, state_at_samples=5,
                     idle_timeout=0, progress=False)
    assert [(p.events >= n, p.agents, p.storage) for p, n in zip(r.points, (300, 600), strict=True)] == [
        (True, 3, "tuned"), (True, 6, "tuned")]
    for p in r.points:
        assert p.seconds > 0 and p.pg_bytes > 0 and p.tables["events"] > 0 and len(p.state_at_ms) == 5
        a = p.agent_state
        assert a["rows"] >= p.agents and 0 < a["stored_state"] <= a["raw_state"] and a["disk"] > 0
    assert r.compression in ("pglz", "lz4")
    text = growth_report(r, "test machine", command="aosk bench growth --sizes 300,600", plot="growth.png")
    assert "PostgreSQL bytes per event within" in text and "growth.png" in text
    plot = tmp_path / "growth.png"
    assert growth_plot(r, plot, title="test") == have_matplotlib() == plot.exists()
