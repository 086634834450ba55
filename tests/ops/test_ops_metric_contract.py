"""The metric names in docs/operations.md ("Metrics") are a contract: the code defines
every row marked `exists` (with its type and labels) and nothing undocumented, the
alert rules and the dashboard use only documented names, and every name follows the
rules (units in the name, `_total` on counters, never an agent id as a label)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import CollectorRegistry

from aosk.api.metrics import ApiMetrics
from aosk.metrics import KernelMetrics
from ops_tools import OPS, ROOT

DOC = ROOT / "docs" / "operations.md"
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def _table() -> dict[str, dict[str, object]]:
    rows = {}
    section = DOC.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        m = re.match(r"\| `(aosk_[a-z0-9_]+)` \|\s*(\w+)\s*\|([^|]*)\|([^|]*)\|([^|]+)\|", line)
        if m:
            name, kind, labels, jobs, status = m.groups()
            rows[name] = {"type": kind, "labels": set(re.findall(r"`(\w+)`", labels)),
                          "jobs": {j.strip() for j in jobs.split(",")}, "status": status.strip()}
    return rows


TABLE = _table()


def _defined() -> dict[str, dict[str, object]]:
    """What the code registers: exposition name -> type and labels."""
    found = {}
    for metrics in (KernelMetrics(CollectorRegistry()), ApiMetrics(CollectorRegistry())):
        for attr in vars(metrics).values():
            family = getattr(attr, "_name", None)
            kind = getattr(attr, "_type", None)
            if family is None or kind is None:
                continue
            name = family + "_total" if kind == "counter" and not family.endswith("_total") else family
            found[name] = {"type": kind, "labels": set(attr._labelnames)}
    return found


def test_the_table_is_there() -> None:
    assert len(TABLE) >= 30
    assert {row["status"] for row in TABLE.values()} <= {"exists", "planned"}


def test_every_metric_the_code_defines_is_documented_as_it_is() -> None:
    defined = _defined()
    assert defined, "no metric found in aosk.metrics / aosk.api.metrics"
    for name, spec in defined.items():
        assert name in TABLE, f"{name} is defined in the code but not in docs/operations.md"
        row = TABLE[name]
        assert row["status"] == "exists", f"{name} exists: mark it so in docs/operations.md"
        assert (row["type"], row["labels"]) == (spec["type"], spec["labels"]), name
    for name, row in TABLE.items():
        if row["status"] == "exists":
            assert name in defined, f"{name} is marked exists but the code does not define it"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_names_follow_the_rules(name: str) -> None:
    row = TABLE[name]
    assert row["type"] in ("counter", "gauge", "histogram"), name
    if row["type"] == "counter":
        assert name.endswith("_total"), name
    else:
        assert not name.endswith("_total"), name
    if row["type"] == "histogram":
        assert name.endswith(("_seconds", "_records", "_bytes")), f"{name}: a histogram names its unit"
    assert not any("agent" in label for label in row["labels"]), f"{name}: never an agent id as a label"
    assert not any(label in ("job", "instance", "node") for label in row["labels"]), "the scrape adds those"
    assert row["jobs"] <= {"api", "worker", "projector", "runtime"}, name


def _used() -> set[str]:
    exprs = [rule["expr"] for group in yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    dash = json.loads((OPS / "grafana" / "dashboards" / "aosk-fleet.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = set()
    for expr in exprs:
        for name in re.findall(r"\b(aosk_[a-z0-9_]+)", expr):
            for suffix in HISTOGRAM_SERIES:
                base = name.removesuffix(suffix)
                if base != name and TABLE.get(base, {}).get("type") == "histogram":
                    name = base
            names.add(name)
    return names


def test_rules_and_dashboard_use_only_documented_metrics() -> None:
    used = _used()
    assert used - set(TABLE) == set(), "used but not in docs/operations.md"


def test_every_documented_metric_is_watched_somewhere() -> None:
    unused = set(TABLE) - _used()
    assert unused == set(), "documented but neither alerted on nor shown on the dashboard"
