"""``aosk api --workers 2 --metrics-port P``: every worker's requests are counted by route
template and status on the separate metrics port (prometheus-client's multiprocess
mode), with the latency histogram, requests in flight and produce latency."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import api_process, free_port, store_key

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_requests_of_both_workers_are_counted_by_route_template_and_status(settings, tmp_path) -> None:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    _, key = store_key(settings, "acme", "write")
    port = free_port()
    with api_process(settings, tmp_path, args=("--workers", "2", "--metrics-port", str(port))) as api:
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        assert "aosk_api" not in api.client().get("/metrics").text  # never on the public port

        def scraped() -> dict[str, list[tuple[dict[str, str], float]]]:
            return _samples(httpx.get(metrics_url, timeout=5).text)

        def counted() -> Counter[tuple[str, str, str]]:
            c: Counter[tuple[str, str, str]] = Counter()
            for labels, value in scraped().get("aosk_api_requests_total", []):
                c[labels["route"], labels["method"], labels["status"]] += int(value)
            return c

        def timed() -> Counter[str]:
            return Counter({labels["route"]: int(v) for labels, v in scraped()["aosk_api_request_seconds_count"]})

        # The harness's /health polls and the /metrics try above came first.
        wait_for(lambda: counted()["unmatched", "GET", "404"] == 1, timeout=10, what="the first requests counted")
        before, timed_before = counted(), timed()
        made: Counter[tuple[str, str, str]] = Counter()
        made_agent = httpx.post(api.base + "/api/v1/agents", json={"name": "m"}, headers={"X-API-Key": key},
                                timeout=30)
        assert made_agent.status_code == 202, made_agent.text
        made["/api/v1/agents", "POST", "202"] += 1
        agent_id = made_agent.json()["agent_id"]
        missing = "00000000-0000-4000-8000-000000000000"
        # New connections each time, so both workers' accept loops get some.
        for i in range(40):
            if i % 4 == 0:
                r = httpx.get(f"{api.base}/api/v1/agents/{agent_id}", headers={"X-API-Key": key})
                made["/api/v1/agents/{agent_id}", "GET", str(r.status_code)] += 1
            elif i % 4 == 1:
                r = httpx.get(f"{api.base}/api/v1/agents/{missing}", headers={"X-API-Key": key})
                assert r.status_code == 404
                made["/api/v1/agents/{agent_id}", "GET", "404"] += 1
            elif i % 4 == 2:
                r = httpx.get(f"{api.base}/health")
                made["/health", "GET", "200"] += 1
            else:
                r = httpx.get(f"{api.base}/no/such/path/{i}")
                made["unmatched", "GET", "404"] += 1

        wait_for(lambda: counted() - before == made, timeout=10, what="every request to be counted")
        s = scraped()
        assert not any("/no/such" in labels.get("route", "") or missing in labels.get("route", "")
                       for samples in s.values() for labels, _ in samples)
        assert sum(made.values()) == 41 and (counted() - before).total() == 41
        hist = timed() - timed_before
        assert hist == {"/health": 10, "/api/v1/agents/{agent_id}": 20, "unmatched": 10, "/api/v1/agents": 1}
        (produced,) = [v for labels, v in s["aosk_api_produce_seconds_count"] if labels["operation"] == "spawn"]
        assert produced == 1
        in_flight = sum(v for _, v in s["aosk_api_requests_in_flight"])
        assert in_flight == 0
        assert sum(v for _, v in s["aosk_api_sse_clients"]) == 0

        # Both workers answered: each wrote its own counter file in the per-run directory.
        found = re.search(r"multiprocess directory (\S+)\)", api.log())
        assert found, api.log()
        directory = Path(found.group(1))
        assert len(list(directory.glob("counter_*.db"))) == 2, sorted(p.name for p in directory.iterdir())
    assert not directory.exists()  # removed when aosk api exits
