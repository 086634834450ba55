"""``aosk bench cluster`` against a real 3-node ``aosk cluster`` behind a real nginx: 60 s of
clients creating agents (each with a task) and events, every request keyed and retried
with its key; node-2 SIGKILLed whole at 20 s and started again; then no acknowledged
request lost, none judged twice (journal folded, audit rows counted), every task ended,
projections equal a replay, ``aosk audit verify --against-journal`` passes (``make
chaos``: a cluster start and a minute of load do not fit the default budget; the
default suite smokes the driver on test_cluster.py's cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cluster import Cluster, cluster  # noqa: F401  (the module's cluster fixture)

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(900)]


def test_a_minute_of_load_with_a_node_killed_loses_and_doubles_nothing(cluster: Cluster,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    run = subprocess.run([sys.executable, "-m", "aosk.cli", "bench", "cluster", "--duration", "60", "--clients", "12",
                          "--kill-at", "20", "--down", "5", "--node", "node-2", "--no-publish",
                          "--requests-log", str(log)],
                         env=cluster.env, capture_output=True, text=True, timeout=840)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out + cluster.logs()
    assert "node-2 SIGKILLed whole" in out and "node-2's API answers again" in out, out
    assert "lost 0, doubled 0, audit rows off 0" in out and "projections equal the fold" in out, out
    assert "audit verify exit 0" in out, out
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    acked = [r for r in requests if r["acked"] is not None]
    # a real load: agents and events acknowledged before, during and after the kill
    assert {r["kind"] for r in acked} == {"agent", "event"}
    assert len(acked) >= 200, len(acked)
    killed = float(out.split("s: node-2 SIGKILLed whole")[0].rsplit("\n", 1)[-1])
    back = float(out.split("s: node-2's API answers again")[0].rsplit("\n", 1)[-1])
    assert any(r["acked"] < killed for r in acked) and any(killed <= r["acked"] < back for r in acked)
    assert any(r["started"] > back for r in acked)
