"""ops/grafana: the dashboard's PromQL parses (promtool check rules on one recording rule
per query), every panel has a query on the Prometheus data-source variable, and the
fleet overview shows what the deployment guide asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops_tools import OPS, explain, run, tool

DASHBOARD = OPS / "grafana" / "dashboards" / "aosk-fleet.json"
# Grafana's built-in interval variables, replaced by what Grafana would put there.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))  # a collapsed row holds its panels
    return out


def _queries() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p, t) for p in _panels(dash["panels"]) if p["type"] != "row" for t in p["targets"]]


def _expand(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"aosk_dashboard:panel_{p['id']}:{t['refId'].lower()}", "expr": _expand(t["expr"])}
             for p, t in _queries()]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, explain(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_invalid_promql_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "aosk_dashboard:bad", "expr": "sum by (le (rate(aosk_api_requests_total[1m]))"}]}]}))
    assert run([tool("promtool"), "check", "rules", str(path)]).returncode != 0


def test_panels_are_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = _panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] == "aosk-fleet"
    assert [v["name"] for v in dash["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


@pytest.mark.parametrize("metric", [
    "aosk_agents",                             # agents by status
    "aosk_worker_records_total",               # events/s
    "aosk_worker_verdict_latency_seconds",     # verdict latency
    "aosk_consumer_lag_records",               # lag
    "aosk_consumer_lag_seconds",
    "aosk_tasks",                              # tasks
    "aosk_runtime_tokens_total",               # tokens
    "aosk_api_requests_total",                 # API rate and errors
    "aosk_api_request_seconds",                # API duration
])
def test_the_fleet_overview_shows(metric: str) -> None:
    assert any(re.search(rf"\b{metric}(_bucket|_count|_sum)?\b", t["expr"]) for _, t in _queries()), metric


def test_provisioning_points_at_the_dashboards_compose_mounts() -> None:
    compose = yaml.safe_load((OPS.parent / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    provider = yaml.safe_load((OPS / "grafana/provisioning/dashboards/aosk.yml").read_text())["providers"][0]
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
