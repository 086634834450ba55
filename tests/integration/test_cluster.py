"""``aosk cluster up --nodes 3`` on the real stack, behind a real nginx, scraped by a real
Prometheus: requests go through nginx to the nodes (X-Forwarded-For reaches the API, an SSE
stream is not buffered); the
Prometheus server started on the cluster's generated configuration (file discovery of
every node's metrics ports) sees every target up, the API's series, the consumer lag of
every group and the verdict and projection latencies; a node SIGKILLed
whole is retried around for keyed POSTs and GETs, reported by ``status`` and brought back
by ``start``; ``down`` leaves no process. One cluster for the module; whatever a test
did, the module's cleanup stops it and SIGKILLs any process left in its groups."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aosk import cluster as cluster_mod
from aosk.cluster import JOBS, ClusterPaths, group_members
from aosk.devstack._process import pid_alive
from aosk.waiting import wait_for
from api_harness import stop_process
from tests.support.api_harness import free_port, store_key
from tests.support.ops_tools import tool
from tests.support.projector_harness import projector_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NODES = ("node-1", "node-2", "node-3")
FORWARDED_FOR = "203.0.113.7"  # TEST-NET-3: only the header can put it in a node's log


@dataclass
class Cluster:
    env: dict[str, str]
    paths: ClusterPaths
    url: str
    up_output: str

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aosk.cli", "cluster", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def record(self) -> dict[str, Any]:
        return dict(json.loads(self.paths.record.read_text()))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.paths.root.glob("node-*.log")))


def _groups(record: dict[str, Any]) -> set[int]:
    return {n["pid"] for n in record["nodes"]} | {record["nginx_pid"]}


@pytest.fixture(scope="module")
def cluster(settings, stack, tmp_path_factory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster-state")
    standin = stack.stack.standin.url
    env = dict(projector_env(settings), AOSK_STATE_DIR=str(state), AOSK_LLM_BASE_URL=standin,
               AOSK_EMBEDDINGS_BASE_URL=standin, AOSK_RUNTIME_GROUP_ID=f"rt-{uuid.uuid4().hex[:8]}")
    paths = ClusterPaths.of(state)
    port = free_port()
    seen: set[int] = set()
    try:
        up = subprocess.run([sys.executable, "-m", "aosk.cli", "cluster", "up", "--nodes", "3", "--port", str(port)],
                            env=env, capture_output=True, text=True, timeout=180)
        if paths.record.exists():
            seen |= _groups(json.loads(paths.record.read_text()))
        assert up.returncode == 0, up.stdout + up.stderr
        c = Cluster(env, paths, f"http://127.0.0.1:{port}", up.stdout)
        yield c
        if paths.record.exists():
            seen |= _groups(c.record())
    finally:
        if paths.record.exists():
            seen |= _groups(json.loads(paths.record.read_text()))
            subprocess.run([sys.executable, "-m", "aosk.cli", "cluster", "down"], env=env, capture_output=True,
                           timeout=120)
        for pgid in seen:  # whatever down did not stop
            for pid in group_members(pgid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def test_up_prints_the_url_and_records_every_node(cluster: Cluster) -> None:
    assert cluster.url in cluster.up_output
    record = cluster.record()
    assert [n["node_id"] for n in record["nodes"]] == list(NODES)
    ports = [n["api_port"] for n in record["nodes"]] + [p for n in record["nodes"] for p in n["metrics_ports"].values()]
    assert len(set(ports)) == len(ports) and record["nginx_port"] not in ports
    for node in record["nodes"]:
        assert group_members(node["pid"]), f"{node['node_id']}'s process group is empty"
        assert os.getpgid(node["pid"]) == node["pid"] and os.getsid(node["pid"]) == node["pid"]
    conf = (cluster.paths.nginx / "nginx.conf").read_text()
    for node in record["nodes"]:
        assert f"server 127.0.0.1:{node['api_port']} " in conf
    assert not re.search(r"\$\{NGINX_[A-Z_]+\}", conf)
    status = cluster.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "cluster: everything up" in status.stdout
    as_json = cluster.cli("status", "--format", "json")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    st = json.loads(as_json.stdout)
    assert st["ok"] and st["url"] == cluster.url and st["nginx"]["api_through_nginx"] in ("healthy", "degraded")
    for node, recorded in zip(st["nodes"], record["nodes"], strict=True):
        assert set(node["children"]) == {"api", "worker-1", "project-1", "runtime-1"} and all(node["children"].values())
        assert {pid for pid in node["children"].values()} <= group_members(recorded["pid"])
        assert {r: m["port"] for r, m in node["metrics"].items()} == recorded["metrics_ports"]


def test_requests_through_nginx_reach_the_nodes(cluster: Cluster, settings) -> None:
    wait_for(lambda: httpx.get(f"{cluster.url}/health", timeout=5).text == "healthy\n", timeout=10,
             what="nginx's own /health")
    _, key = store_key(settings, "acme", "write")
    headers = {"X-API-Key": key, "X-Forwarded-For": FORWARDED_FOR}
    made = httpx.post(f"{cluster.url}/api/v1/agents", json={"name": "through-nginx"},
                      headers={**headers, "Idempotency-Key": "cluster-create-1"}, timeout=30)
    assert made.status_code == 202, made.text
    agent_id = made.json()["agent_id"]
    got = httpx.get(f"{cluster.url}/api/v1/agents/{agent_id}", timeout=30,
                    headers={**headers, "AOSK-Consistency-Token": made.headers["aosk-consistency-token"]})
    assert got.status_code == 200, got.text
    assert got.json()["agent_id"] == agent_id and got.json()["status"] == "READY"
    # The agent's SSE stream through nginx: its first message arrives while the stream stays
    # open (nginx buffering it would hold it back until the stream ended, which it never does)
    with httpx.stream("GET", f"{cluster.url}/api/v1/agents/{agent_id}/stream", headers=headers,
                      timeout=httpx.Timeout(10.0)) as stream:
        assert stream.status_code == 200 and stream.headers["x-accel-buffering"] == "no"
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: AgentSpawned"
    # uvicorn trusts nginx (127.0.0.1) for X-Forwarded-For: the client it logs is the header's
    wait_for(lambda: f"{FORWARDED_FOR}:0 - \"GET /api/v1/agents/{agent_id}" in cluster.logs(), timeout=10,
             what="the node's access log line with the forwarded client address")


@contextmanager
def _prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus on the cluster's generated configuration, scraping every second."""
    source = cluster.paths.prometheus / "prometheus.yml"
    config = yaml.safe_load(source.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    fast = cluster.paths.prometheus / "prometheus-1s.yml"  # beside targets/ and alerts.yml, which it names
    fast.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([tool("prometheus"), f"--config.file={fast}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=30, what="Prometheus to be ready")
        yield base
    finally:
        stop_process(proc, grace=15)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_a_real_prometheus_scrapes_every_node(cluster: Cluster, tmp_path: Path) -> None:
    expected = {(job, node) for job in JOBS.values() for node in NODES}
    with _prometheus(cluster, tmp_path) as base:
        def all_up() -> bool:
            targets = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            return (len(targets) == len(expected)
                    and all(t["health"] == "up" for t in targets))

        try:
            wait_for(all_up, timeout=45, what=f"{len(expected)} targets up")
        except TimeoutError as e:
            targets = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            raise AssertionError(f"{e}: {[(t['labels'], t['health'], t['lastError']) for t in targets]}") from e
        up = _query(base, "up")
        assert {(s["metric"]["job"], s["metric"]["node"]) for s in up} == expected
        assert all(s["value"][1] == "1" for s in up)
        # a request through nginx, then its series on the API job
        assert httpx.get(f"{cluster.url}/api/health", timeout=10).status_code == 200

        def api_series() -> list[dict[str, Any]]:
            return _query(base, 'aosk_api_requests_total{route="/api/health"}')

        wait_for(lambda: bool(api_series()), timeout=20, what="aosk_api_requests_total scraped")
        assert {s["metric"]["job"] for s in api_series()} == {"api"}
        assert {s["metric"]["node"] for s in api_series()} <= set(NODES)
        assert _query(base, "aosk_api_request_seconds_bucket"), "no API latency histogram"
        stopped = _query(base, "aosk_partition_stopped")
        assert all(s["metric"]["job"] in {"worker", "projector"} for s in stopped)

        # The lag of every consumer group, from every node (each owns some of the journal's
        # partitions, each of which holds at least its fold-version marker) ...
        consumers = {(job, node) for job in ("worker", "projector", "runtime") for node in NODES}

        def lag_from() -> set[tuple[str, str]]:
            return {(s["metric"]["job"], s["metric"]["node"]) for s in _query(base, "aosk_consumer_lag_records")}

        try:
            wait_for(lambda: lag_from() == consumers, timeout=30, what="aosk_consumer_lag_records from every consumer")
        except TimeoutError as e:
            raise AssertionError(f"{e}: have {sorted(lag_from())}") from e
        # ... and the produce-to-verdict and produce-to-projection latencies, counted for the
        # records this module wrote (the agent created through nginx) by some node.
        for metric, job in (("aosk_worker_verdict_latency_seconds", "worker"),
                            ("aosk_projection_latency_seconds", "projector")):
            series = _query(base, f"{metric}_count")
            assert {(s["metric"]["job"], s["metric"]["node"]) for s in series} == {(job, n) for n in NODES}, series
            wait_for(lambda metric=metric: float(_query(base, f"sum({metric}_count)")[0]["value"][1]) > 0,
                     timeout=20, what=f"{metric} to count a record")
            assert _query(base, f'{metric}_bucket{{le="+Inf"}}'), f"no {metric} buckets"


def test_a_node_killed_whole_is_retried_around_and_comes_back(cluster: Cluster, settings) -> None:
    _, key = store_key(settings, "acme", "write")
    record = cluster.record()
    victim = record["nodes"][1]
    killed = cluster.cli("kill", "node-2")
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert not group_members(victim["pid"])
    status = cluster.cli("status")
    assert status.returncode == 1 and "node-2: supervisor pid" in status.stdout and "DOWN" in status.stdout, \
        status.stdout

    # Keyed POSTs and GETs are safe to repeat: nginx tries another node when node-2 refuses.
    with httpx.Client(base_url=cluster.url, headers={"X-API-Key": key}, timeout=30) as client:
        for i in range(6):
            made = client.post("/api/v1/agents", json={"name": f"retried-{i}"},
                               headers={"Idempotency-Key": f"cluster-retry-{i}"})
            assert made.status_code == 202, made.text
            listed = client.get("/api/v1/agents")
            assert listed.status_code == 200, listed.text
    # ... and it did try node-2 on the way: its failed connections are in nginx's error log
    errors = (cluster.paths.nginx / "error.log").read_text()
    assert f"upstream: \"http://127.0.0.1:{victim['api_port']}/" in errors, errors

    started = cluster.cli("start", "node-2")
    assert started.returncode == 0, started.stdout + started.stderr + cluster.logs()
    again = cluster.record()["nodes"][1]
    assert again["pid"] != victim["pid"] and again["api_port"] == victim["api_port"]
    wait_for(lambda: bool((st := cluster_mod.status(cluster.paths.root.parent)) and st.ok), timeout=60,
             what="every part of the cluster up again")


def test_the_load_driver_checks_its_own_run(cluster: Cluster) -> None:
    """A few seconds of ``aosk bench cluster`` without a kill (the minute with a node
    SIGKILLed is test_cluster_load.py, ``make chaos``): its writes acknowledged, then found
    once each in the journal and the audit log, their tasks ended, the replay equal."""
    run = subprocess.run([sys.executable, "-m", "aosk.cli", "bench", "cluster", "--duration", "3", "--clients", "4",
                          "--kill-at", "-1", "--events-per-agent", "1", "--no-publish"],
                         env=cluster.env, capture_output=True, text=True, timeout=180)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    acked = int(re.search(r"requests: \d+ \((\d+) acknowledged, 0 not\)", out).group(1))  # type: ignore[union-attr]
    assert acked >= 4, out
    assert "lost 0, doubled 0, audit rows off 0" in out and "(0 not ended)" in out, out
    assert "projections equal the fold, audit verify exit 0" in out, out


def test_down_stops_every_process(cluster: Cluster) -> None:
    record = cluster.record()
    members = set().union(*(group_members(g) for g in _groups(record)))
    assert len(members) >= 3 * 5 + 2  # 3 supervisors with 4+ children each, nginx master and worker(s)
    down = cluster.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "SIGKILLed" not in down.stdout, down.stdout  # every process stopped on its signal
    assert not cluster.paths.record.exists()
    assert not [p for p in members if pid_alive(p)]
    assert not set().union(*(group_members(g) for g in _groups(record)))
    again = cluster.cli("status")
    assert again.returncode == 1 and "no cluster recorded" in again.stdout
