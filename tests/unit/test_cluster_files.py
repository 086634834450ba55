"""``aosk cluster``'s files and plans, without processes: the nginx template rendered as
envsubst renders it, the Prometheus targets in the format prometheus.local.yml reads
(checked by promtool), port plans, the record's round trip."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from aosk.cluster import (
    NGINX_PLACEHOLDERS,
    ClusterPaths,
    ClusterRecord,
    NodeRecord,
    PortPicker,
    load_record,
    nginx_values,
    node_argv,
    plan_nodes,
    prometheus_targets,
    render_nginx,
    save_record,
    write_prometheus,
)
from tests.support.ops_tools import OPS, explain, run, tool

TEMPLATE = (OPS / "nginx" / "nginx.conf.template").read_text()


def test_render_matches_envsubst_on_the_documented_placeholders(tmp_path: Path) -> None:
    values = nginx_values(ClusterPaths(tmp_path), 18080, [18081, 18082])
    assert set(values) == set(NGINX_PLACEHOLDERS)
    shell_format = " ".join(f"${{{name}}}" for name in sorted(values))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values}
    expected = subprocess.run([tool("envsubst"), shell_format], input=TEMPLATE, capture_output=True, text=True,
                              env=env, check=True, timeout=30).stdout
    assert render_nginx(TEMPLATE, values) == expected
    assert "server 127.0.0.1:18081 max_fails=3 fail_timeout=10s; server 127.0.0.1:18082" in expected


def test_render_refuses_a_missing_value_or_an_undocumented_placeholder() -> None:
    values = {name: "x" for name in NGINX_PLACEHOLDERS}
    with pytest.raises(ValueError, match="NGINX_LISTEN"):
        render_nginx(TEMPLATE, {k: v for k, v in values.items() if k != "NGINX_LISTEN"})
    with pytest.raises(ValueError, match="NGINX_OTHER"):
        render_nginx(TEMPLATE + "\n${NGINX_OTHER}\n", values)


def _nodes(tmp_path: Path, picker: PortPicker | None = None) -> list[NodeRecord]:
    return plan_nodes(ClusterPaths(tmp_path), 3, ("api", "worker", "project", "runtime"), picker or PortPicker())


def test_targets_carry_a_node_label_per_job_and_promtool_accepts_them(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    targets = prometheus_targets(nodes)
    assert set(targets) == {"api", "worker", "projector", "runtime"}
    assert [t["labels"]["node"] for t in targets["projector"]] == ["node-1", "node-2", "node-3"]
    assert targets["worker"][0]["targets"] == [f"127.0.0.1:{nodes[0].metrics_ports['worker']}"]
    paths = ClusterPaths(tmp_path / "cluster")
    write_prometheus(paths, nodes)
    loaded = json.loads((paths.prometheus / "targets" / "runtime.json").read_text())
    assert loaded == targets["runtime"]
    result = run([tool("promtool"), "check", "config", str(paths.prometheus / "prometheus.yml")])
    assert result.returncode == 0, explain(result)
    assert "targets/api.json" not in result.stderr, explain(result)


def test_ports_are_the_suggested_ones_when_free_and_never_twice(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        picker = PortPicker()
        first, second = picker.pick(taken), picker.pick(taken)
        assert taken not in (first, second) and first != second
        base = picker.pick_base(taken - 3, (1, 2, 3, 4))  # base + 3 is taken: another base
        assert base != taken - 3 and not {base + 1, base + 2, base + 3, base + 4} & {taken, first, second}
    nodes = _nodes(tmp_path)
    every = [p for n in nodes for p in (n.api_port, *n.metrics_ports.values())]
    assert len(set(every)) == len(every) == 15


def test_a_node_without_the_api_role_has_no_api_port(tmp_path: Path) -> None:
    (node,) = plan_nodes(ClusterPaths(tmp_path), 1, ("worker",), PortPicker())
    assert node.api_port is None and node.metrics_ports == {"worker": node.metrics_base + 2}
    argv = node_argv(node, ClusterRecord(str(tmp_path), 8080, [node]))
    assert "--port" not in argv and argv[argv.index("--roles") + 1] == "worker"
    assert argv[argv.index("--metrics-base") + 1] == str(node.metrics_base)


def test_the_record_round_trips(tmp_path: Path) -> None:
    paths = ClusterPaths(tmp_path / "cluster")
    paths.root.mkdir()
    record = ClusterRecord(str(tmp_path), 8080, _nodes(tmp_path), nginx_pid=42, config_path="/etc/aosk.yaml")
    record.nodes[1].pid = 4321
    save_record(paths, record)
    assert load_record(paths) == record
    written = json.loads(paths.record.read_text())["nodes"][0]
    assert written["metrics_ports"] == {"api": written["metrics_base"] + 1, "worker": written["metrics_base"] + 2,
                                        "project": written["metrics_base"] + 3, "runtime": written["metrics_base"] + 4}
    assert load_record(ClusterPaths(tmp_path / "none")) is None
