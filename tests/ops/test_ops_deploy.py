"""The deployment artefacts: docker-compose.yml against the Compose specification's JSON
schema, ops/k8s against the Kubernetes API schemas (kubernetes-validate --strict),
ops/Dockerfile through BuildKit's parser, and every `aosk` command they name exists and
takes the flags given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import pytest
import yaml

from aosk.config import ENV_KEYS
from ops_tools import OPS, ROOT, explain, run

COMPOSE = ROOT / "docker-compose.yml"
K8S = sorted((OPS / "k8s").glob("*.yaml"))
DOCKERFILE = OPS / "Dockerfile"
IMAGE = "agent-os-kernel:latest"
# metrics port of each role (docs/operations.md "Metrics ports")
METRICS_PORTS = {"api": 9101, "worker": 9102, "projector": 9103, "runtime": 9104}

# Commands and flags the artefacts name before they exist, with the work that adds them.
# Once a command or flag exists, its case is checked like any other.
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]


def _dockerfile() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


# --- docker-compose.yml -----------------------------------------------------------------

def _compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_follows_the_compose_specification() -> None:
    assert _compose_errors(_compose()) == []


def test_the_compose_schema_catches_a_misspelt_key() -> None:
    doc = _compose()
    doc["services"]["api"]["comand"] = doc["services"]["api"].pop("command")
    assert any("comand" in e for e in _compose_errors(doc))


def test_compose_runs_the_seeds_cluster() -> None:
    services = _compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:3.9")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    metrics = ["--metrics-base", "9100"]
    assert services["api"]["command"] == ["aosk", "node", "--roles", "api", *metrics]
    assert services["worker"]["command"] == ["aosk", "node", "--roles", "worker,project", *metrics]
    assert services["runtime"]["command"] == ["aosk", "node", "--roles", "runtime", *metrics]
    for name in ("nginx", "prometheus", "grafana"):
        assert name in services
    mounts = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if v.startswith("./")}
    for mount in mounts:
        assert (ROOT / mount).exists(), f"docker-compose.yml mounts {mount}, which does not exist"


def test_compose_exposes_the_metrics_ports_aosk_node_gives_its_children() -> None:
    from aosk.node import metrics_port, parse_roles

    for name in ("api", "worker", "runtime"):
        service = _compose()["services"][name]
        command = service["command"]
        roles = parse_roles(command[command.index("--roles") + 1])
        base = int(command[command.index("--metrics-base") + 1])
        assert {str(metrics_port(base, role)) for role in roles} <= set(map(str, service["expose"])), name


def test_prometheus_finds_the_compose_services_on_their_metrics_ports() -> None:
    services = _compose()["services"]
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    for job in scrape:
        sd = job["dns_sd_configs"][0]
        assert sd["port"] == METRICS_PORTS[job["job_name"]]
        for name in sd["names"]:
            assert str(sd["port"]) in services[name]["expose"], (job["job_name"], name)
    assert str(services["api"]["environment"]["AOSK_API_METRICS_PORT"]) == "9101"


def _aosk_env_names() -> set[str]:
    names: set[str] = set()
    for service in _compose()["services"].values():
        names |= {k for k in service.get("environment", {}) if k.startswith("AOSK_")}
    for doc in _k8s_docs():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("AOSK_")}
    return names


def test_every_aosk_variable_set_is_a_setting() -> None:
    unknown = _aosk_env_names() - set(ENV_KEYS)
    assert not unknown, f"not AOSK settings (aosk/config.py ENV_KEYS): {sorted(unknown)}"


# --- ops/k8s ----------------------------------------------------------------------------

def test_kubernetes_manifests_validate_strictly() -> None:
    result = run([sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, K8S)], timeout=120)
    assert result.returncode == 0, explain(result)


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    doc = yaml.safe_load((OPS / "k8s" / "namespace.yaml").read_text())
    doc["metadata"]["lables"] = {"a": "b"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert run([sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)], timeout=120).returncode != 0


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def test_a_deployment_per_role_with_health_probes() -> None:
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in _by_kind("Deployment")}
    assert set(deployments) == set(METRICS_PORTS)
    for role, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["containers"]
        assert c["image"] == IMAGE and "command" not in c, "args only: the image's tini entrypoint stays"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", role
        assert c["readinessProbe"]["httpGet"]["path"] == "/api/health", role
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == METRICS_PORTS[role]
        args = c["args"]
        assert args[args.index("--metrics-port") + 1] == str(METRICS_PORTS[role])
        assert c["livenessProbe"]["httpGet"]["port"] in ports
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_services_hpa_and_budgets_point_at_deployments() -> None:
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in _by_kind("Deployment")]

    def matches(selector: dict[str, str]) -> bool:
        return any(selector.items() <= lab.items() for lab in labels)

    for svc in _by_kind("Service"):
        assert matches(svc["spec"]["selector"]), svc["metadata"]["name"]
    budgets = _by_kind("PodDisruptionBudget")
    assert len(budgets) == len(labels)
    for pdb in budgets:
        assert matches(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    (hpa,) = _by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "aosk-api"
    assert {d["metadata"]["name"] for d in _by_kind("Deployment")} >= {"aosk-api"}
    assert all(d["metadata"].get("namespace", "aosk") == "aosk" for d in _k8s_docs())


def test_the_secret_holds_placeholders_only() -> None:
    (secret,) = _by_kind("Secret")
    assert set(secret["stringData"].values()) <= {"change-me", ""}


# --- ops/Dockerfile ---------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    commands = _dockerfile()
    stages = [c for c in commands if c.cmd == "FROM"]
    assert len(stages) >= 2
    final = commands[commands.index(stages[-1]):]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [c for c in final if c.cmd == "HEALTHCHECK" and c.json]
    assert [c for c in final if c.cmd == "CMD" and c.json]
    assert any(c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final)


def test_dockerfile_copies_what_exists_and_the_context_keeps_it() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for c in _dockerfile():
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
            for src in c.value[:-1]:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") not in ignored, f"{src} is excluded by .dockerignore"
    exposed = {int(p) for c in _dockerfile() if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {8080, *METRICS_PORTS.values()}


# --- every aosk command named --------------------------------------------------------

def _named_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, service in _compose()["services"].items():
        if isinstance(service.get("command"), list) and service["command"][0] == "aosk":
            found.append((f"compose:{name}", service["command"]))
    for d in _k8s_docs():
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            argv = c.get("args", [])
            if argv and argv[0] == "aosk":
                found.append((f"k8s:{d['metadata']['name']}", argv))
    for c in _dockerfile():
        argv = list(c.value[1:] if c.cmd == "HEALTHCHECK" else c.value)
        if c.cmd in ("CMD", "HEALTHCHECK") and argv and argv[0] == "aosk":
            found.append((f"Dockerfile:{c.cmd}", argv))
    return found


NAMED = _named_commands()


def test_the_artefacts_name_aosk_commands() -> None:
    sources = {source.split(":")[0] for source, _ in NAMED}
    assert sources == {"compose", "k8s", "Dockerfile"}
    assert {source for source, _ in NAMED} >= {"Dockerfile:CMD", "Dockerfile:HEALTHCHECK"}


@pytest.mark.parametrize("argv", [argv for _, argv in NAMED], ids=[f"{s} {' '.join(a[1:])}" for s, a in NAMED])
def test_named_aosk_command_exists_and_takes_its_flags(argv: list[str]) -> None:
    from aosk.cli import build_parser

    words = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    shown = subprocess.run([sys.executable, "-m", "aosk.cli", *words, "--help"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, explain(shown)
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f"`{' '.join(argv)}` is refused by aosk's parser (exit {e.code})") from e
