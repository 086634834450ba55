"""``aosk node`` on the real stack: the four roles run as children in the node's process
group; a SIGKILLed child is restarted (a new pid, logged); SIGTERM stops the node with
exit 0 within 20 s and every child gone; a SIGKILLed supervisor takes its children
with it."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from aosk.devstack._process import pid_alive
from aosk.node import metrics_port
from aosk.waiting import wait_for
from tests.support.api_harness import free_port
from tests.support.node_harness import NodeProcess, proc_stat
from tests.support.projector_harness import projector_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def node(settings, tmp_path: Path, *args: str) -> NodeProcess:
    env = dict(projector_env(settings), AOSK_RUNTIME_GROUP_ID=f"rt-{uuid.uuid4().hex[:8]}")
    return NodeProcess([sys.executable, "-m", "aosk.cli", "node", "--node-id", "n-test", *args],
                       tmp_path / "node.log", env=env)


def free_metrics_base() -> int:
    """A base whose four metrics ports (base+1 .. base+4) are free now."""
    import random
    import socket

    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20_000, 60_000, 10)
        try:
            for k in range(1, 5):
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", base + k))
        except OSError:
            continue
        return base
    raise AssertionError("no four free ports in a row")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def restarted(n: NodeProcess, name: str, old_pid: int) -> bool:
    pid = n.pids().get(name)
    return pid is not None and pid != old_pid and pid in n.children()


def test_node_restarts_a_killed_child_and_stops_on_sigterm(settings, tmp_path: Path) -> None:
    port, base = free_port(), free_metrics_base()
    with node(settings, tmp_path, "--host", "127.0.0.1", "--port", str(port), "--metrics-base", str(base)) as n:
        pids = n.wait_children({"api", "worker-1", "project-1", "runtime-1"})
        for name, pid in pids.items():
            assert proc_stat(pid) == (n.pid, n.pid), f"{name} is not in the node's process group"

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what="the node's API to answer /health")
        wait_for(lambda: "aosk worker n-test joins group" in n.log(), timeout=60, what="the worker to join its group")

        for name in ("worker-1", "api"):
            os.kill(pids[name], signal.SIGKILL)
            wait_for(lambda name=name: restarted(n, name, pids[name]), timeout=30, what=f"{name} to be restarted")
            assert re.search(rf"{name} \(pid {pids[name]}\) was killed by SIGKILL after [\d.]+ s; restarting in",
                             n.log()), n.log()
        wait_for(healthy, timeout=60, what="the restarted API to answer /health")

        # Every child serves its role's metrics port (the restarted worker too); the
        # worker, projector and runtime answer the probes' paths there.
        for role in ("api", "worker", "project", "runtime"):
            url = f"http://127.0.0.1:{metrics_port(base, role)}"
            wait_for(lambda url=url: answers(f"{url}/metrics"), timeout=30, what=f"{role}'s metrics on {url}")
            if role != "api":
                assert answers(f"{url}/health")
        assert "aosk_worker_records_total" in httpx.get(f"http://127.0.0.1:{base + 2}/metrics").text
        assert "aosk_projector_batches_total" in httpx.get(f"http://127.0.0.1:{base + 3}/metrics").text

        every = n.seen | n.children()
        t0 = time.monotonic()
        n.send(signal.SIGTERM)
        assert n.wait(25) == 0, n.log()
        took = time.monotonic() - t0
        assert took < 20, f"the node took {took:.1f} s to stop"
        assert not [p for p in every if pid_alive(p)], n.log()
    log = n.log()
    assert "node stopping on SIGTERM: SIGTERM to 4 children" in log and "node stopped" in log, log
    assert "did not stop" not in log, log


def test_children_die_with_a_sigkilled_node(settings, tmp_path: Path) -> None:
    with node(settings, tmp_path, "--roles", "worker,project,runtime") as n:
        pids = n.wait_children({"worker-1", "project-1", "runtime-1"})
        assert "api" not in n.pids()
        wait_for(lambda: "aosk worker n-test joins group" in n.log(), timeout=60, what="the worker to join its group")
        n.send(signal.SIGKILL)
        n.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in pids.values()), timeout=5,
                 what="the children to die with their supervisor")
