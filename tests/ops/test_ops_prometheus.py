"""ops/prometheus: the scrape configs and alert rules are valid for promtool, and every
alert fires in one `promtool test rules` case and stays quiet in another."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from ops_tools import OPS, explain, run, tool

PROM = OPS / "prometheus"
JOBS = {"api", "worker", "projector", "runtime"}


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_scrape_config_is_valid(config: str) -> None:
    # also checks the rule files it names and, for file discovery, the target files
    result = run([tool("promtool"), "check", "config", config], cwd=PROM)
    assert result.returncode == 0, explain(result)


def test_kubernetes_scrape_config_is_valid(tmp_path: Path) -> None:
    config = PROM / "prometheus.k8s.yml"
    result = run([tool("promtool"), "check", "config", config.name], cwd=PROM)
    if result.returncode != 0 and "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian's Prometheus is built without Kubernetes discovery: check everything else
        # (relabelling, rule files, globals) with the discovery swapped for static targets.
        doc = yaml.safe_load(config.read_text())
        for job in doc["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["10.0.0.1:9101"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(doc))
        shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
        result = run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert result.returncode == 0, explain(result)


def test_every_layout_scrapes_the_same_jobs() -> None:
    for name in ("prometheus.yml", "prometheus.local.yml"):
        doc = yaml.safe_load((PROM / name).read_text())
        assert {job["job_name"] for job in doc["scrape_configs"]} == JOBS, name
    k8s = yaml.safe_load((PROM / "prometheus.k8s.yml").read_text())
    keep = next(r for r in k8s["scrape_configs"][0]["relabel_configs"]
                if r.get("action") == "keep" and "component" in r["source_labels"][0])
    assert set(keep["regex"].strip("()").split("|")) == JOBS
    for job in JOBS:  # the local example targets exist for every job, with a node label
        groups = yaml.safe_load((PROM / "targets" / f"{job}.json").read_text())
        assert groups and all(g["labels"]["node"] for g in groups)


def test_the_local_example_targets_are_the_ports_aosk_node_gives_node_n() -> None:
    from aosk.node import metrics_port

    for job in JOBS:  # node-n started with --metrics-base 9100 + 10n (docs/operations.md "Metrics ports")
        role = "project" if job == "projector" else job
        for g in yaml.safe_load((PROM / "targets" / f"{job}.json").read_text()):
            n = int(g["labels"]["node"].removeprefix("node-"))
            assert g["targets"] == [f"127.0.0.1:{metrics_port(9100 + 10 * n, role)}"], (job, g)


def test_alert_rules_are_valid() -> None:
    result = run([tool("promtool"), "check", "rules", "alerts.yml"], cwd=PROM)
    assert result.returncode == 0, explain(result)


def _alerts() -> list[str]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    cases = [case for t in tests for case in t["alert_rule_test"]]
    alerts = _alerts()
    assert len(alerts) == len(set(alerts)), "alert names must be unique"
    for alert in alerts:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert}: no case where it stays quiet"
    assert {case["alertname"] for case in cases} <= set(alerts), "a test names an alert that does not exist"


def test_alert_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", "tests/alerts_test.yml"], cwd=PROM)
    assert result.returncode == 0, explain(result)


def test_a_wrong_expectation_fails_promtool_test_rules(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one firing case turned quiet does."""
    text = (PROM / "tests" / "alerts_test.yml").read_text()
    firing_case = (r"(alertname: AoskNodeDown\n\s+exp_alerts:)\n"
                   r"(\s+- exp_labels:.*\n(\s+(exp_annotations|summary|description).*\n)*)")
    broken, n = re.subn(firing_case, r"\1 []\n", text, count=1)
    assert n == 1
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yml").write_text(broken)
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    result = run([tool("promtool"), "test", "rules", "tests/alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0 and "AoskNodeDown" in result.stdout + result.stderr, explain(result)
