"""The benchmarks stay runnable: ``aosk bench project`` and ``aosk bench replay`` at a
small size on the real stack produce a verified projection and a report. (Their figures
are not asserted: speed targets live in docs/benchmarks.md, never in timed tests.)"""

from __future__ import annotations

import pytest

from aosk.bench.project import bench_project
from aosk.bench.project import report_markdown as project_report
from aosk.bench.replay import bench_replay
from aosk.bench.replay import report_markdown as replay_report
from aosk.config import Settings

pytestmark = pytest.mark.integration


def test_bench_project_small(settings: Settings) -> None:
    r = bench_project(settings, events=2_000, agents=20, processes=2, repeat=2, progress=False)
    assert r.verified
    assert r.rows["audit_log"] == r.events
    assert r.e2e_seconds in r.runs and len(r.runs) == 2 and r.live_seconds > 0
    assert "hnsw" in r.index
    text = project_report(r, "test machine")
    assert "journal written first" in text and "AOSK live" in text


def test_bench_replay_small(settings: Settings) -> None:
    r = bench_replay(settings, events=2_000, agents=20, processes=2, batch_max=500, replay_processes=2,
                     progress=False)
    assert r.digests_equal
    assert "Rebuild / live" in replay_report(r, "test machine")
