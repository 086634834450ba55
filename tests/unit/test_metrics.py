"""``aosk.metrics``: the role registries, consumer lag, the per-batch counts, gauges
computed at scrape time, and the metrics port's paths (/metrics, /health, /api/health)."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

from prometheus_client import CollectorRegistry, generate_latest

from aosk.metrics import ROLES, KernelMetrics, health_app


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_only_the_enabled_roles_metrics_are_registered() -> None:
    reg = CollectorRegistry()
    m = KernelMetrics(reg)
    assert _names(reg) == {"aosk_dependency_unavailable", "aosk_partition_stopped"}
    m.enable("worker")
    m.enable("worker")  # twice is once
    names = _names(reg)
    assert {"aosk_worker_verdicts", "aosk_agents", "aosk_consumer_lag_records"} <= names
    assert not any(n.startswith(("aosk_runtime", "aosk_projector")) for n in names)
    m.enable("projector")  # shares the lag gauges with the worker: registered once
    assert "aosk_projector_rows" in _names(reg)
    assert set(ROLES) == {"worker", "projector", "runtime"}


def test_lag_in_records_and_seconds_and_forgotten_with_the_partition() -> None:
    reg = CollectorRegistry()
    m = KernelMetrics(reg)
    m.enable("worker")
    m.lag("g", 3, next_offset=90, end=100, last_timestamp_ms=50_000, now_ms=62_500)
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="3") == 10
    assert _value(reg, "aosk_consumer_lag_seconds", group="g", partition="3") == 12.5
    m.lag("g", 3, next_offset=100, end=100, last_timestamp_ms=50_000, now_ms=99_000)
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="3") == 0
    assert _value(reg, "aosk_consumer_lag_seconds", group="g", partition="3") == 0  # caught up: 0, not the age
    m.lag("g", 4, next_offset=0, end=None, last_timestamp_ms=None, now_ms=0)  # end unknown: no series
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="4") is None
    m.lag("g", 5, next_offset=0, end=7, last_timestamp_ms=None, now_ms=0)  # nothing processed yet
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="5") == 7
    assert _value(reg, "aosk_consumer_lag_seconds", group="g", partition="5") is None
    m.forget_lag("g", [3, 5, 6])
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="3") is None
    assert _value(reg, "aosk_consumer_lag_records", group="g", partition="5") is None


def test_batch_counts_add_up() -> None:
    reg = CollectorRegistry()
    m = KernelMetrics(reg)
    m.enable("worker")
    m.folded({"AgentSpawned": 2, "undecodable": 1}, {("AgentSpawned", "accepted", "ok"): 2})
    m.folded({"AgentSpawned": 1}, {("AgentSpawned", "duplicate", "duplicate_event"): 1,
                                   ("AgentSpawned", "accepted", "ok"): 1})
    assert _value(reg, "aosk_worker_records_total", type="AgentSpawned") == 3
    assert _value(reg, "aosk_worker_records_total", type="undecodable") == 1
    assert _value(reg, "aosk_worker_verdicts_total", type="AgentSpawned", kind="accepted", reason="ok") == 3
    m.enable("projector")
    m.projected({"audit_log": 4, "events": 4, "tasks": 0}, [1_000, 2_000], 0.25)
    assert _value(reg, "aosk_projector_batches_total") == 1
    assert _value(reg, "aosk_projector_rows_total", table="audit_log") == 4
    assert _value(reg, "aosk_projector_rows_total", table="tasks") is None  # no row, no series
    assert _value(reg, "aosk_projector_transaction_seconds_sum") == 0.25
    assert _value(reg, "aosk_projection_latency_seconds_count") == 2


def test_scraped_gauges_are_computed_at_scrape_time_and_zero_what_went_away() -> None:
    reg = CollectorRegistry()
    m = KernelMetrics(reg)
    m.enable("runtime")
    counts = {"queued": 2, "running": 1}
    m.tasks.source(lambda: dict(counts))
    assert _value(reg, "aosk_tasks", status="queued") == 2
    counts.clear()
    counts["running"] = 3
    assert _value(reg, "aosk_tasks", status="queued") == 0
    assert _value(reg, "aosk_tasks", status="running") == 3

    def broken() -> dict[str, int]:
        raise RuntimeError("dictionary changed size during iteration")

    m.tasks.source(broken)  # a failing source leaves the last values; the scrape still answers
    assert b"aosk_tasks" in generate_latest(reg)
    assert _value(reg, "aosk_tasks", status="running") == 3
    m.run_queue_agents.set_function(lambda: 5)
    assert _value(reg, "aosk_runtime_run_queue_agents") == 5


def _get(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def test_the_metrics_port_answers_metrics_liveness_and_readiness() -> None:
    reg = CollectorRegistry()
    m = KernelMetrics(reg)
    m.outage_counter("kafka", "worker").inc()
    calls = []

    def ready() -> dict[str, Any]:
        calls.append(1)
        return {"status": "degraded", "checks": {"kafka": {"status": "error"}}}

    app = health_app(reg, ready, fresh_s=0)
    status, headers, body = _get(app, "/metrics")
    assert status.startswith("200")
    assert b'aosk_dependency_unavailable_total{dependency="kafka",role="worker"} 1.0' in body
    status, headers, body = _get(app, "/health")
    assert (status, json.loads(body)) == ("200 OK", {"status": "healthy"}) and not calls  # nothing asked
    status, headers, body = _get(app, "/api/health")
    assert status == "200 OK" and json.loads(body)["status"] == "degraded" and calls == [1]
    assert headers["Content-Type"] == "application/json"
    assert _get(app, "/other")[0].startswith("404")

    def failing() -> dict[str, Any]:
        raise OSError("no route to host")

    status, _, body = _get(health_app(reg, failing, fresh_s=0), "/api/health")
    assert status.startswith("503") and json.loads(body)["status"] == "unhealthy"
    assert "no route to host" in json.loads(body)["error"]
    assert _get(health_app(reg, None), "/api/health")[0].startswith("503")


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    import urllib.request

    import pytest

    from aosk.errors import AoskError
    from aosk.metrics import serve

    reg = CollectorRegistry()
    KernelMetrics(reg)
    httpd = serve(0, "127.0.0.1", registry=reg)
    try:
        port = httpd.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert json.loads(r.read()) == {"status": "healthy"}
        with pytest.raises(AoskError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve(port, "127.0.0.1", registry=reg)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_readiness_answers_are_reused_while_fresh_and_while_a_check_runs() -> None:
    import threading

    reg = CollectorRegistry()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def ready() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:  # the second check hangs until released (a dependency not answering)
            started.set()
            release.wait(10)
        return {"status": "healthy", "n": len(calls)}

    fresh = health_app(reg, ready, fresh_s=60)
    assert [json.loads(_get(fresh, "/api/health")[2])["n"] for _ in range(3)] == [1, 1, 1]
    app = health_app(reg, ready, fresh_s=0)
    calls.clear()
    assert json.loads(_get(app, "/api/health")[2])["n"] == 1
    slow = threading.Thread(target=_get, args=(app, "/api/health"))
    slow.start()
    assert started.wait(10)
    status, _, body = _get(app, "/api/health")  # answered at once with the previous result
    assert status == "200 OK" and json.loads(body)["n"] == 1
    release.set()
    slow.join(10)
    assert json.loads(_get(app, "/api/health")[2])["n"] == 3
