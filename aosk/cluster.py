"""N nodes and one nginx on this machine: ``aosk cluster up | down | status | kill | start``.

``up`` starts N ``aosk node`` supervisors (node ids ``node-1`` ... ``node-N``) against the
Kafka and PostgreSQL this process is configured for (the dev stack of its state directory
by default), each with its own API port and metrics ports, and one real nginx rendered
from ``ops/nginx/nginx.conf.template`` with their API servers as upstreams. Everything
lives under ``<state_dir>/cluster/``:

=============================  ==============================================================
``cluster.json``               what runs: each node's supervisor pid, ports and log; nginx's
``node-<n>.log``               a node supervisor's output and its children's (new with each
                               ``up``, appended to by ``start``)
``nginx/nginx.conf``           the template rendered for the ports in use (``nginx/run/``
                               holds its pid and temporary files; ``error.log``,
                               ``access.log``, ``nginx.log``: its own output)
``prometheus/prometheus.yml``  a copy of ``ops/prometheus/prometheus.local.yml``, with
                               ``alerts.yml`` beside it and ``targets/<job>.json``: each
                               process's metrics address with its ``node`` label
=============================  ==============================================================

What holds, and why:

- Each node supervisor is started in a session of its own (``start_new_session``), so it
  survives the command that started it and leads its process group: its pid is the
  group's id, and ``kill -- -PID`` (``aosk cluster kill``) takes the node whole.
- nginx runs in the foreground (``daemon off``) in a session of its own, so its master's
  pid is recorded directly, is its group's id, and nothing depends on a pid file.
- ``down`` sends SIGTERM to every supervisor (each stops its children within 20 s) and
  SIGQUIT to nginx (a graceful stop), waits for every process of their groups, then
  SIGKILLs what is left, and removes ``cluster.json``.
- Ports: the API of node *n* on ``8080 + n``, its metrics on ``9100 + 10n + 1..4`` (api,
  worker, projector, runtime: ``aosk node --metrics-base``, docs/operations.md "Metrics
  ports"), nginx on 8080; a port taken by another process is replaced by a free one (for
  the metrics, another base with all four free), and what was chosen is recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from aosk.devstack._process import free_port, pid_alive, port_in_use
from aosk.errors import ClusterError
from aosk.node import METRICS_OFFSETS, ROLES, metrics_port

RECORD_FILE: Final = "cluster.json"
NGINX_PLACEHOLDERS: Final = ("NGINX_LISTEN", "NGINX_UPSTREAM_SERVERS", "NGINX_RUN_DIR", "NGINX_ERROR_LOG",
                             "NGINX_ACCESS_LOG")
"""Exactly the placeholders ``ops/nginx/nginx.conf.template`` documents; nothing else in it
is substituted (its ``$variables`` are nginx's own)."""
JOBS: Final = {"api": "api", "worker": "worker", "project": "projector", "runtime": "runtime"}
"""Role -> its Prometheus job (the jobs of ops/prometheus/*.yml and alerts.yml)."""
DEFAULT_NGINX_PORT: Final = 8080
STOP_TIMEOUT_S: Final = 25.0
"""How long ``down`` waits after the signals: above a node's own 20 s stop."""
HOST: Final = "127.0.0.1"
UPSTREAM_OPTIONS: Final = "max_fails=3 fail_timeout=10s"
"""After 3 failed tries nginx leaves an API server out for 10 s."""


@dataclass
class NodeRecord:
    node_id: str
    roles: tuple[str, ...]
    api_port: int | None
    """None when the node runs no API."""
    metrics_base: int
    """``aosk node --metrics-base``: the node's roles serve metrics on base + 1 api, + 2
    worker, + 3 project, + 4 runtime."""
    log: str
    pid: int | None = None
    """The supervisor's pid, which is also its process group's id."""

    @property
    def metrics_ports(self) -> dict[str, int]:
        """Role -> the metrics port of its (one) child."""
        return {role: metrics_port(self.metrics_base, role) for role in self.roles}


@dataclass
class ClusterRecord:
    state_dir: str
    nginx_port: int
    nodes: list[NodeRecord]
    nginx_pid: int | None = None
    config_path: str | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.nginx_port}"

    def node(self, node_id: str) -> NodeRecord:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ClusterError(f"no node {node_id!r} in the cluster; it has {', '.join(n.node_id for n in self.nodes)}")


@dataclass(frozen=True)
class ClusterPaths:
    """Where the cluster's files are (``<state_dir>/cluster``)."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path) -> ClusterPaths:
        return cls(state_dir.expanduser().resolve() / "cluster")

    @property
    def record(self) -> Path:
        return self.root / RECORD_FILE

    @property
    def nginx(self) -> Path:
        return self.root / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx / "nginx.conf"

    @property
    def nginx_log(self) -> Path:
        return self.nginx / "nginx.log"

    @property
    def prometheus(self) -> Path:
        return self.root / "prometheus"

    def node_log(self, node_id: str) -> Path:
        return self.root / f"{node_id}.log"


# --- the record ----------------------------------------------------------------------------


def load_record(paths: ClusterPaths) -> ClusterRecord | None:
    """The recorded cluster, or None when none is recorded."""
    try:
        data = json.loads(paths.record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ClusterError(f"{paths.record} is unreadable ({e}); stop what it ran by hand and remove it") from e
    nodes = []
    for n in data.pop("nodes"):
        n.pop("metrics_ports", None)  # derived from the base, written for the reader
        nodes.append(NodeRecord(**dict(n, roles=tuple(n["roles"]))))
    return ClusterRecord(nodes=nodes, **data)


def save_record(paths: ClusterPaths, record: ClusterRecord) -> None:
    data = asdict(record)
    for node, written in zip(record.nodes, data["nodes"], strict=True):
        written["metrics_ports"] = node.metrics_ports
    _write_atomically(paths.record, json.dumps(data, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- ports -----------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` on every address (as the API's metrics do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortPicker:
    """The suggested port when it is free, another free one otherwise; never one twice."""

    def __init__(self, taken: Iterable[int] = ()) -> None:
        self.used = set(taken)

    def pick(self, suggested: int) -> int:
        port = suggested
        while port in self.used or not port_free(port):
            port = free_port()
        self.used.add(port)
        return port

    def pick_base(self, suggested: int, offsets: Iterable[int]) -> int:
        """A base whose ``base + offset`` ports are all free: ``suggested`` if it is."""
        wanted = sorted(set(offsets))
        base = suggested
        while not all(0 < base + o <= 65535 and base + o not in self.used and port_free(base + o) for o in wanted):
            base = free_port() - wanted[0]
        self.used.update(base + o for o in wanted)
        return base


def plan_nodes(paths: ClusterPaths, count: int, roles: tuple[str, ...], picker: PortPicker) -> list[NodeRecord]:
    """Node ids, API ports and metrics bases of ``count`` nodes (see the module docstring)."""
    nodes = []
    for n in range(1, count + 1):
        node_id = f"node-{n}"
        api_port = picker.pick(DEFAULT_NGINX_PORT + n) if "api" in roles else None
        base = picker.pick_base(9100 + 10 * n, (METRICS_OFFSETS[r] for r in roles))
        nodes.append(NodeRecord(node_id, roles, api_port, base, str(paths.node_log(node_id))))
    return nodes


# --- files: nginx and Prometheus ------------------------------------------------------------


def ops_dir() -> Path:
    """The repository's ``ops/`` (templates of nginx and Prometheus)."""
    path = Path(__file__).resolve().parents[1] / "ops"
    if not (path / "nginx" / "nginx.conf.template").is_file():
        raise ClusterError(f"{path} has no nginx/nginx.conf.template: `aosk cluster` runs from a checkout of "
                           "the repository (pip install -e .), whose ops/ it renders")
    return path


def render_nginx(template: str, values: Mapping[str, str]) -> str:
    """``template`` with exactly ``NGINX_PLACEHOLDERS`` replaced (what the tests' envsubst does)."""
    missing = set(NGINX_PLACEHOLDERS) - set(values)
    if missing:
        raise ValueError(f"no value for {sorted(missing)}")
    text = template
    for name in NGINX_PLACEHOLDERS:
        text = text.replace("${" + name + "}", values[name])
    left = re.findall(r"\$\{NGINX_[A-Z_]+\}", text)
    if left:
        raise ValueError(f"the template names placeholders that are not documented: {sorted(set(left))}")
    return text


def nginx_values(paths: ClusterPaths, port: int, api_ports: Iterable[int]) -> dict[str, str]:
    servers = " ".join(f"server {HOST}:{p} {UPSTREAM_OPTIONS};" for p in api_ports)
    return {"NGINX_LISTEN": f"{HOST}:{port}", "NGINX_UPSTREAM_SERVERS": servers,
            "NGINX_RUN_DIR": str(paths.nginx / "run"), "NGINX_ERROR_LOG": str(paths.nginx / "error.log"),
            "NGINX_ACCESS_LOG": str(paths.nginx / "access.log")}


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise ClusterError("nginx is not installed: apt-get install nginx (`make test` installs it when missing)")
    return path


def _nginx_argv(paths: ClusterPaths) -> list[str]:
    return [nginx_binary(), "-p", str(paths.nginx), "-c", str(paths.nginx_conf), "-e",
            str(paths.nginx / "error.log"), "-g", "daemon off;"]


def write_nginx_conf(paths: ClusterPaths, record: ClusterRecord) -> None:
    """Render the template for the record's ports and check it with ``nginx -t``."""
    api_ports = [n.api_port for n in record.nodes if n.api_port is not None]
    (paths.nginx / "run").mkdir(parents=True, exist_ok=True)
    template = (ops_dir() / "nginx" / "nginx.conf.template").read_text()
    paths.nginx_conf.write_text(render_nginx(template, nginx_values(paths, record.nginx_port, api_ports)))
    check = subprocess.run([*_nginx_argv(paths)[:-2], "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise ClusterError(f"nginx -t refused {paths.nginx_conf}: {check.stderr.strip()}")


def prometheus_targets(nodes: Iterable[NodeRecord]) -> dict[str, list[dict[str, Any]]]:
    """Job -> its file-discovery targets: each process's metrics address with its ``node``."""
    targets: dict[str, list[dict[str, Any]]] = {job: [] for job in JOBS.values()}
    for node in nodes:
        for role, port in node.metrics_ports.items():
            targets[JOBS[role]].append({"targets": [f"{HOST}:{port}"], "labels": {"node": node.node_id}})
    return targets


def write_prometheus(paths: ClusterPaths, nodes: Iterable[NodeRecord]) -> None:
    """``prometheus.yml`` (ops' ``prometheus.local.yml``), ``alerts.yml`` and ``targets/<job>.json``."""
    source = ops_dir() / "prometheus"
    (paths.prometheus / "targets").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "prometheus.local.yml", paths.prometheus / "prometheus.yml")
    shutil.copyfile(source / "alerts.yml", paths.prometheus / "alerts.yml")
    for job, targets in prometheus_targets(nodes).items():  # Prometheus re-reads them: never half-written
        _write_atomically(paths.prometheus / "targets" / f"{job}.json", json.dumps(targets, indent=2) + "\n")


# --- processes -------------------------------------------------------------------------------


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.add(int(entry))
    return out


_STARTED = re.compile(r"\b(?:started|restarted) (\S+) \(pid (\d+)")


def node_children(node: NodeRecord) -> dict[str, int | None]:
    """Each child of a running node by name (``api``, ``worker-1``, ...): its pid when it
    is alive in the node's process group, None when it is down (from the node's log)."""
    try:
        text = Path(node.log).read_text(errors="replace")
    except OSError:
        return {}
    if node.pid is None:
        return {}
    members = group_members(node.pid)
    latest = {name: int(pid) for name, pid in _STARTED.findall(text)}
    return {name: pid if pid in members else None for name, pid in latest.items()}


def node_argv(node: NodeRecord, record: ClusterRecord) -> list[str]:
    argv = [sys.executable, "-m", "aosk.cli"]
    if record.config_path:
        argv += ["--config", record.config_path]
    argv += ["node", "--node-id", node.node_id, "--roles", ",".join(node.roles), "--log-level", "info"]
    if node.api_port is not None:
        argv += ["--host", HOST, "--port", str(node.api_port)]
    argv += ["--metrics-base", str(node.metrics_base)]
    return argv


def start_node(node: NodeRecord, record: ClusterRecord, environ: Mapping[str, str], *, fresh_log: bool) -> None:
    """Start the node's supervisor detached (a session of its own); sets ``node.pid``.
    Its log starts afresh (``up``) or is appended to (``start``)."""
    env = dict(environ, AOSK_STATE_DIR=record.state_dir, PYTHONUNBUFFERED="1")
    with open(node.log, "wb" if fresh_log else "ab") as out:
        proc = subprocess.Popen(node_argv(node, record), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    node.pid = proc.pid


def start_nginx(paths: ClusterPaths, record: ClusterRecord) -> None:
    with open(paths.nginx_log, "wb") as out:
        proc = subprocess.Popen(_nginx_argv(paths), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    record.nginx_pid = proc.pid


_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Every address asked is on this machine: an ``http_proxy`` in the environment must not
take the requests elsewhere."""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of a GET, or None when nothing answered."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as r:
            return int(r.status), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def api_health(base_url: str) -> str | None:
    """``healthy`` or ``degraded`` as ``/api/health`` under ``base_url`` says; None when it
    does not answer 200."""
    got = http_get(f"{base_url}/api/health")
    if got is None or got[0] != 200:
        return None
    try:
        return str(json.loads(got[1]).get("status", "unknown"))
    except ValueError:
        return "unknown"


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:]) or "(empty so far)"
    except OSError:
        return "(no log)"


def wait_ready(record: ClusterRecord, nodes: list[NodeRecord], *, timeout: float, nginx: bool,
               say: Callable[[str], None]) -> None:
    """Until every node in ``nodes`` answers ``/api/health`` (and nginx ``/health``), showing
    each as it comes up; ClusterError naming what did not, with its log's tail."""
    t0 = time.monotonic()
    pending = {n.node_id for n in nodes if n.api_port is not None} | ({"nginx"} if nginx else set())
    last_said = t0
    while True:
        for node in nodes:
            if node.pid is None or not pid_alive(node.pid):
                raise ClusterError(f"{node.node_id}'s supervisor exited; its log {node.log} ends:\n"
                                   f"{log_tail(node.log)}")
            if node.node_id in pending and node.api_port is not None:
                status = api_health(f"http://{HOST}:{node.api_port}")
                if status is not None:
                    pending.discard(node.node_id)
                    say(f"  {node.node_id}: API on {HOST}:{node.api_port} answers /api/health ({status}) "
                        f"after {time.monotonic() - t0:.1f} s")
        if "nginx" in pending:
            if record.nginx_pid is None or not pid_alive(record.nginx_pid):
                raise ClusterError(f"nginx exited; see {Path(record.state_dir) / 'cluster' / 'nginx'}:\n"
                                   f"{log_tail(Path(record.state_dir) / 'cluster' / 'nginx' / 'error.log')}")
            got = http_get(f"{record.url}/health")
            if got is not None and got[0] == 200:
                pending.discard("nginx")
                say(f"  nginx: {record.url}/health answers after {time.monotonic() - t0:.1f} s")
        if not pending:
            return
        now = time.monotonic()
        if now - t0 >= timeout:
            tails = "\n".join(f"--- {n.node_id} ({n.log}) ---\n{log_tail(n.log)}"
                              for n in nodes if n.node_id in pending)
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {', '.join(sorted(pending))}\n{tails}")
        if now - last_said >= 10:
            say(f"  waiting for {', '.join(sorted(pending))} ({now - t0:.0f} s)")
            last_said = now
        time.sleep(0.3)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(groups: Mapping[int, int], *, timeout: float) -> int:
    """Send each process group its signal (pgid -> signal to its leader), wait until every
    process of them is gone, SIGKILL whatever is left after ``timeout``; how many processes
    had to be killed."""
    for pgid, sig in groups.items():
        try:
            os.kill(pgid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(group_members(g) for g in groups):
            return 0
        time.sleep(0.2)
    left = {g: group_members(g) for g in groups}
    for pgid in left:
        signal_group(pgid, signal.SIGKILL)
    killed = sum(len(m) for m in left.values())
    deadline = time.monotonic() + 10
    while any(group_members(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


def record_alive(record: ClusterRecord) -> list[str]:
    """What of the record still runs: node ids and ``nginx``."""
    alive = [n.node_id for n in record.nodes if n.pid is not None and group_members(n.pid)]
    if record.nginx_pid is not None and group_members(record.nginx_pid):
        alive.append("nginx")
    return alive


# --- the commands --------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    nodes: int = 3
    roles: tuple[str, ...] = ROLES
    port: int | None = None
    """nginx's port; None: 8080, or a free one when that is taken."""
    timeout_s: float = 120.0
    """How long ``up`` waits for every API and nginx to answer."""


def up(state_dir: Path, options: UpOptions, *, config_path: str | None, environ: Mapping[str, str],
       ensure: Callable[[], None], say: Callable[[str], None]) -> tuple[ClusterRecord, bool]:
    """Start the cluster (see the module docstring); (its record, whether it was already
    running). ``ensure`` makes the topics before any node starts (Kafka unreachable: it
    raises, nothing is started)."""
    paths = ClusterPaths.of(state_dir)
    existing = load_record(paths)
    if existing is not None:
        if record_alive(existing):
            return existing, True
        say(f"removing the record of a cluster that no longer runs ({paths.record})")
        paths.record.unlink()
    if "api" not in options.roles:
        raise ClusterError("the nodes need the api role: nginx has no upstream otherwise")
    if options.port is not None and not port_free(options.port):
        raise ClusterError(f"port {options.port} is taken; pick another with --port, or leave it out for a free one")
    nodes = f"{options.nodes} node{'s' if options.nodes != 1 else ''}"
    say(f"starting {nodes} ({','.join(options.roles)}) and nginx in {paths.root} ...")
    ensure()
    paths.root.mkdir(parents=True, exist_ok=True)
    picker = PortPicker()
    nginx_port = picker.pick(options.port if options.port is not None else DEFAULT_NGINX_PORT)
    record = ClusterRecord(state_dir=str(paths.root.parent), nginx_port=nginx_port, config_path=config_path,
                           nodes=plan_nodes(paths, options.nodes, options.roles, picker))
    write_nginx_conf(paths, record)
    write_prometheus(paths, record.nodes)
    try:
        for node in record.nodes:  # recorded as each starts, so a failure part way stops what did
            start_node(node, record, environ, fresh_log=True)
            save_record(paths, record)
            say(f"  started {node.node_id} (supervisor pid {node.pid}; log {node.log})")
        start_nginx(paths, record)
        save_record(paths, record)
        say(f"  started nginx (pid {record.nginx_pid}) on {record.url}")
        say(f"waiting for {len(record.nodes)} APIs and nginx to answer (up to {options.timeout_s:.0f} s) ...")
        wait_ready(record, record.nodes, timeout=options.timeout_s, nginx=True, say=say)
    except BaseException:
        say("stopping what was started")
        down(state_dir, say=lambda _: None)
        raise
    return record, False


def down(state_dir: Path, *, say: Callable[[str], None]) -> ClusterRecord | None:
    """Stop the recorded cluster (see the module docstring); its record, None if none was."""
    paths = ClusterPaths.of(state_dir)
    record = load_record(paths)
    if record is None:
        return None
    groups = {n.pid: signal.SIGTERM for n in record.nodes if n.pid is not None and group_members(n.pid)}
    if record.nginx_pid is not None and group_members(record.nginx_pid):
        groups[record.nginx_pid] = signal.SIGQUIT
    if groups:
        say(f"stopping {len(groups)} process groups (SIGTERM to the node supervisors, SIGQUIT to nginx; "
            f"SIGKILL to what is left after {STOP_TIMEOUT_S:.0f} s) ...")
    killed = stop_groups(groups, timeout=STOP_TIMEOUT_S)
    if killed:
        say(f"  {killed} processes did not stop in time and were SIGKILLed")
    paths.record.unlink(missing_ok=True)
    return record


@dataclass
class NodeStatus:
    node_id: str
    pid: int | None
    supervisor_alive: bool
    children: dict[str, int | None]
    api: str | None
    """``/api/health``'s status on the node's own port; None when it does not answer."""
    metrics: dict[str, bool]
    """Role -> whether its metrics port answers."""

    @property
    def ok(self) -> bool:
        return (self.supervisor_alive and bool(self.children) and all(self.children.values())
                and (self.api is not None or "api" not in self.children) and all(self.metrics.values()))


@dataclass
class ClusterStatus:
    record: ClusterRecord
    nodes: list[NodeStatus]
    nginx_alive: bool
    nginx_health: bool
    """nginx answers its own ``/health``."""
    api_through_nginx: str | None
    """``/api/health`` through nginx: an API server's status, None when none answered."""

    @property
    def ok(self) -> bool:
        return (self.nginx_alive and self.nginx_health and self.api_through_nginx is not None
                and all(n.ok for n in self.nodes))


def status(state_dir: Path) -> ClusterStatus | None:
    record = load_record(ClusterPaths.of(state_dir))
    if record is None:
        return None
    nodes = []
    for node in record.nodes:
        alive = node.pid is not None and pid_alive(node.pid)
        nodes.append(NodeStatus(
            node.node_id, node.pid, alive, node_children(node) if alive else {},
            api_health(f"http://{HOST}:{node.api_port}") if node.api_port is not None else None,
            {role: port_in_use(port, HOST) for role, port in node.metrics_ports.items()}))
    nginx_alive = record.nginx_pid is not None and pid_alive(record.nginx_pid)
    got = http_get(f"{record.url}/health")
    return ClusterStatus(record, nodes, nginx_alive, got is not None and got[0] == 200, api_health(record.url))


def status_json(st: ClusterStatus) -> dict[str, Any]:
    """``aosk cluster status --format json``: the status with each node's ports."""
    nodes = []
    for n in st.nodes:
        node = st.record.node(n.node_id)
        nodes.append({"node_id": n.node_id, "pid": n.pid, "supervisor_alive": n.supervisor_alive,
                      "children": n.children, "api_port": node.api_port, "api": n.api,
                      "metrics": {role: {"port": node.metrics_ports[role], "up": up} for role, up in n.metrics.items()},
                      "ok": n.ok})
    return {"ok": st.ok, "url": st.record.url, "nginx": {"pid": st.record.nginx_pid, "alive": st.nginx_alive,
            "health": st.nginx_health, "api_through_nginx": st.api_through_nginx}, "nodes": nodes}


def kill_node(state_dir: Path, node_id: str) -> tuple[NodeRecord, int]:
    """SIGKILL the node's whole process group (supervisor and children); (the node, how
    many processes it had)."""
    record = _running_record(state_dir)
    node = record.node(node_id)
    members = group_members(node.pid) if node.pid is not None else set()
    if not members or node.pid is None:
        raise ClusterError(f"{node_id} is not running")
    signal_group(node.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_members(node.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_members(node.pid):
        raise ClusterError(f"{node_id}'s processes {sorted(group_members(node.pid))} outlived SIGKILL for 10 s")
    return node, len(members)


def start_again(state_dir: Path, node_id: str, *, environ: Mapping[str, str], timeout: float,
                say: Callable[[str], None]) -> NodeRecord | None:
    """Start a stopped node again on its recorded ports and wait for its API; None when it
    was running."""
    paths = ClusterPaths.of(state_dir)
    record = _running_record(state_dir)
    node = record.node(node_id)
    if node.pid is not None and pid_alive(node.pid):
        return None
    if node.pid is not None and group_members(node.pid):
        raise ClusterError(f"{node_id}'s supervisor is gone but processes {sorted(group_members(node.pid))} of "
                           f"its group remain; `aosk cluster kill {node_id}` first")
    taken = [p for p in (node.api_port, *node.metrics_ports.values()) if p is not None and not port_free(p)]
    if taken:
        raise ClusterError(f"{node_id}'s ports {taken} are taken by other processes")
    start_node(node, record, environ, fresh_log=False)
    save_record(paths, record)
    say(f"  started {node.node_id} (supervisor pid {node.pid}; log {node.log})")
    wait_ready(record, [node], timeout=timeout, nginx=False, say=say)
    return node


def _running_record(state_dir: Path) -> ClusterRecord:
    record = load_record(ClusterPaths.of(state_dir))
    if record is None:
        raise ClusterError(f"no cluster recorded in {ClusterPaths.of(state_dir).root} (`aosk cluster up`)")
    return record
