"""The metrics ports of a worker, a projector and a runtime on the real stack: agents with
tasks run through all three, then each process's ``/metrics`` says what happened (the
worker's verdicts equal the journal's records, every lag reaches 0, rows by table,
tokens by tenant, tasks ended), and ``/health`` and ``/api/health`` answer on the same
port (docs/operations.md, "Metrics ports" and "Metrics")."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aosk.client import KernelClient
from aosk.events import AgentTerminated, Budgets, TaskSubmitted
from aosk.streams.kafka import group_id
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from tests.support.api_harness import free_port
from tests.support.projector_harness import Projectors
from tests.support.runtime_harness import Runtimes, journal_report
from tests.support.standin_harness import standin_process
from tests.support.worker_harness import Workers, read_journal

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=100_000,
                  tokens_per_hour=1_000_000, calls_per_hour=10_000, tokens_per_request=20_000)
TENANTS = ("acme", "globex")
AGENTS = 4
ENDED = "m-ended"


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> (sorted labels -> value) of what ``port`` serves at /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k))


def by(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in samples.get(name, {}).items():
        key = dict(k)[label]
        out[key] = out.get(key, 0) + v
    return out


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def lag_is_zero(port: int, group: str, partitions: int) -> bool:
    s = scrape(port)
    lag = {dict(k)["partition"]: v for k, v in s.get("aosk_consumer_lag_records", {}).items()
           if dict(k)["group"] == group}
    return len(lag) == partitions and not any(lag.values())


def test_worker_projector_and_runtime_serve_their_metrics_and_health(settings, tmp_path: Path) -> None:
    s = settings
    k = s.kafka
    ensure_topics(k.bootstrap_servers, k, mark_new_journal=True)
    tasks = []
    with KernelClient.from_settings(s) as kernel:
        pending = []
        for i in range(AGENTS):
            a, tenant = f"m-{i}", TENANTS[i % 2]
            pending.append(kernel.spawn(agent_id=a, tenant_id=tenant, name=a, budgets=BUDGETS,
                                        capabilities=("calculator",)))
            t = f"{a}-t"
            pending.append(kernel.emit(TaskSubmitted, agent_id=a, tenant_id=tenant, task_id=t, metadata={},
                                       input=f'Work this out: calculator(expression="{i}*7").'))
            tasks.append(t)
        pending.append(kernel.spawn(agent_id=ENDED, tenant_id="acme", name=ENDED, budgets=BUDGETS))
        pending.append(kernel.emit(AgentTerminated, agent_id=ENDED, tenant_id="acme", exit_code=0, reason="done"))
        for p in pending:
            p.result()

    wport, pport, rport = free_port(), free_port(), free_port()
    runtime_group = f"rt-{uuid.uuid4().hex[:8]}"
    (tmp_path / "p").mkdir()
    projectors = Projectors(s, tmp_path / "p", schema="aosk", args=("--metrics-port", str(pport)))
    try:
        with standin_process(tmp_path) as standin, \
                Workers(s, tmp_path / "w", args=("--metrics-port", str(wport))) as workers, \
                Runtimes(s, tmp_path / "r", standin.url, group_id=runtime_group) as runtimes:
            workers.start("w1")
            projectors.start("p1")
            runtimes.start("r1", "--metrics-port", str(rport))
            wait_for(lambda: sum(journal_report(s).tasks_by_outcome().values()) >= len(tasks), timeout=90,
                     interval=1.0, what="every task to end")

            # The runtime: tasks ended, tokens by tenant, model and tool calls, its lag.
            wait_for(lambda: total(scrape(rport), "aosk_tasks_ended_total") >= len(tasks), timeout=30,
                     what="the runtime to count the ended tasks")
            wait_for(lambda: lag_is_zero(rport, runtime_group, k.journal_partitions), timeout=30,
                     what="the runtime's lag to reach 0")
            r = scrape(rport)
            assert by(r, "aosk_tasks_ended_total", "status") == {"succeeded": len(tasks)}
            assert by(r, "aosk_tasks", "status") == {"queued": 0, "running": 0}
            assert total(r, "aosk_runtime_run_queue_agents") == 0
            tokens = by(r, "aosk_runtime_tokens_total", "tenant")
            assert set(tokens) == set(TENANTS) and min(tokens.values()) > 0, tokens
            assert total(r, "aosk_runtime_tokens_total", kind="prompt") > 0
            assert total(r, "aosk_runtime_tokens_total", kind="completion") > 0
            assert total(r, "aosk_runtime_model_call_seconds_count") >= 2 * len(tasks)  # a tool turn, then the answer
            assert total(r, "aosk_runtime_tool_call_seconds_count", tool="calculator") == len(tasks)
            assert total(r, "aosk_runtime_model_call_errors_total") == 0
            assert "aosk_worker_records_total" not in r  # a role exports its own metrics only
            status, body = get(rport, "/health")
            assert (status, body) == (200, {"status": "healthy"})
            status, body = get(rport, "/api/health")
            assert status == 200 and body["status"] in ("healthy", "degraded"), body
            assert {"kafka", "postgresql", "projector_lag", "worker_lag"} <= set(body["checks"]), body
            assert body["checks"]["kafka"]["status"] == "ok" and body["checks"]["postgresql"]["status"] == "ok"
            assert runtimes.stop("r1") == 0

            # The worker: a verdict per journal record, agents by status, lag 0.
            records = read_journal(k.bootstrap_servers, k.journal_topic)
            wait_for(lambda: total(scrape(wport), "aosk_worker_verdicts_total") >= len(records)
                     and lag_is_zero(wport, group_id(k.topic_prefix), k.journal_partitions),
                     timeout=60, what="the worker's verdicts of every record and lag 0")
            w = scrape(wport)
            assert total(w, "aosk_worker_verdicts_total") == len(records)
            assert total(w, "aosk_worker_records_total") == len(records)
            assert total(w, "aosk_worker_records_total", type="TaskSubmitted") == len(tasks)
            assert total(w, "aosk_worker_verdicts_total", type="TaskCompleted", kind="accepted", reason="ok") \
                == len(tasks)
            assert total(w, "aosk_worker_batch_records_sum") == len(records)
            assert total(w, "aosk_worker_batch_records_count") == total(w, "aosk_worker_fold_seconds_count") > 0
            wait_for(lambda: total(scrape(wport), "aosk_worker_verdict_latency_seconds_count") == len(records),
                     timeout=30, what="every verdict's acknowledgement")
            assert total(w, "aosk_agents_started_total") == AGENTS + 1
            assert by(w, "aosk_agents_ended_total", "status") == {"TERMINATED": 1}
            agents = {st: n for st, n in by(w, "aosk_agents", "status").items() if n}
            assert sum(agents.values()) == AGENTS + 1 and agents["TERMINATED"] == 1, agents
            assert get(wport, "/health")[0] == 200
            assert get(wport, "/api/health")[0] == 200

            # The projector: every record's audit and event rows, batches, lag 0.
            group = f"{k.topic_prefix}.projectors.aosk"
            wait_for(lambda: total(scrape(pport), "aosk_projector_rows_total", table="audit_log") >= len(records)
                     and lag_is_zero(pport, group, k.journal_partitions), timeout=60,
                     what="the projector's rows of every record and lag 0")
            pm = scrape(pport)
            rows = by(pm, "aosk_projector_rows_total", "table")
            assert rows["audit_log"] == rows["events"] == len(records), rows
            assert rows["agent_state"] > 0 and rows["tasks"] > 0, rows
            batches = total(pm, "aosk_projector_batches_total")
            assert batches > 0 and total(pm, "aosk_projector_transaction_seconds_count") == batches
            assert total(pm, "aosk_projection_latency_seconds_count") == len(records)
            assert total(pm, "aosk_projector_fenced_batches_total") == 0
            assert total(pm, "aosk_consumer_lag_seconds", group=group) == 0
            assert get(pport, "/health")[0] == 200
            status, body = get(pport, "/api/health")
            assert status == 200 and body["checks"]["postgresql"]["status"] == "ok", body
            assert get(pport, "/nothing")[0] == 404
            assert workers.stop("w1") == 0
    finally:
        projectors.close()
