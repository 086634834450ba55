"""``aosk cluster``'s files and plans, without processes: the nginx template rendered as
envsubst renders it, the Prometheus targets in the format prometheus.local.yml reads
(checked by promtool), port plans, the node's ``--metrics-port``, the record's round trip."""

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
from aosk.node import NodeLayout, node_children, parse_metrics_port
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
    return plan_nodes(ClusterPaths(tmp_path), 3, ("api", "worker", "project", "runtime"),
                      ("api", "worker", "project", "runtime"), picker or PortPicker())


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
    nodes = _nodes(tmp_path)
    every = [p for n in nodes for p in (n.api_port, *n.metrics_ports.values())]
    assert len(set(every)) == len(every) == 15


def test_a_node_without_the_api_role_has_no_api_port(tmp_path: Path) -> None:
    (node,) = plan_nodes(ClusterPaths(tmp_path), 1, ("worker",), ("api", "worker"), PortPicker())
    assert node.api_port is None and set(node.metrics_ports) == {"worker"}
    argv = node_argv(node, ClusterRecord(str(tmp_path), 8080, [node]))
    assert "--port" not in argv and argv[argv.index("--roles") + 1] == "worker"
    assert argv[argv.index("--metrics-port") + 1] == f"worker={node.metrics_ports['worker']}"


def test_the_record_round_trips(tmp_path: Path) -> None:
    paths = ClusterPaths(tmp_path / "cluster")
    paths.root.mkdir()
    record = ClusterRecord(str(tmp_path), 8080, _nodes(tmp_path), nginx_pid=42, config_path="/etc/aosk.yaml")
    record.nodes[1].pid = 4321
    save_record(paths, record)
    assert load_record(paths) == record
    assert load_record(ClusterPaths(tmp_path / "none")) is None


def test_node_children_get_their_metrics_ports() -> None:
    layout = NodeLayout(node_id="n", metrics_ports={"api": 9111, "worker": 9112})
    argv = {c.name: c.argv for c in node_children(layout, python="py")}
    assert argv["api"][-2:] == ("--metrics-port", "9111") and argv["worker-1"][-2:] == ("--metrics-port", "9112")
    assert "--metrics-port" not in argv["project-1"]
    with pytest.raises(ValueError, match="exactly one worker process"):
        node_children(NodeLayout(node_id="n", worker_processes=2, metrics_ports={"worker": 9112}))
    assert parse_metrics_port("project=9113") == ("project", 9113)
    for bad in ("projector=9113", "api", "api=0", "api=x"):
        with pytest.raises(ValueError, match="ROLE=PORT"):
            parse_metrics_port(bad)
