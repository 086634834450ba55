"""``aosk cluster up --nodes N | down | status | kill NODE | start NODE``: N ``aosk node``
supervisors and a real nginx in front of their APIs, on this machine (``aosk.cluster``;
docs/operations.md "Cluster on one machine")."""

from __future__ import annotations

import argparse
import json
import os
import sys

from aosk.cli._flags import add_format, positive_int
from aosk.cli.node import _roles  # the same --roles as aosk node
from aosk.config import Settings
from aosk.node import ROLES


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text}: a port is 1-65535")
    return port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("cluster", help="N nodes behind a real nginx on this machine (up, down, status, kill, start)",
                       description="Run N `aosk node` supervisors and nginx in front of their APIs, detached, "
                       "against the configured Kafka and PostgreSQL (the dev stack by default). Files, logs and "
                       "cluster.json live in <state_dir>/cluster/.")
    actions = c.add_subparsers(dest="action", metavar="ACTION", required=True)
    u = actions.add_parser("up", help="start the nodes and nginx; wait until each API answers; print the URL")
    u.add_argument("--nodes", type=positive_int, default=3, metavar="N", help="how many nodes (default %(default)s)")
    u.add_argument("--roles", type=_roles, default=ROLES, metavar="LIST",
                   help=f"roles of every node (default {','.join(ROLES)}; api is required)")
    u.add_argument("--port", type=_port, metavar="P", help="nginx's port (default 8080, or a free one if taken)")
    u.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for every API and nginx (default %(default)s)")
    u.set_defaults(run=_up)
    actions.add_parser("down", help="SIGTERM the nodes, SIGQUIT nginx, SIGKILL what is left after 25 s"
                       ).set_defaults(run=_down)
    st = actions.add_parser("status", help="each node's supervisor, children, API and metrics, and nginx; "
                            "exit 1 if anything is down")
    add_format(st)
    st.set_defaults(run=_status)
    k = actions.add_parser("kill", help="SIGKILL one node whole (its supervisor's process group)")
    k.add_argument("node", metavar="NODE", help="node id, e.g. node-2")
    k.set_defaults(run=_kill)
    s = actions.add_parser("start", help="start a stopped node again on its recorded ports")
    s.add_argument("node", metavar="NODE", help="node id, e.g. node-2")
    s.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for its API (default %(default)s)")
    s.set_defaults(run=_start)


def _say(line: str) -> None:
    print(line, flush=True)


def _config(args: argparse.Namespace) -> str | None:
    return os.path.abspath(args.config) if getattr(args, "config", None) else None


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from aosk import cluster

    def ensure() -> None:
        from aosk.endpoints import resolve_endpoints
        from aosk.topics import ensure_topics

        ensure_topics(resolve_endpoints(settings).bootstrap, settings.kafka, mark_new_journal=True)

    options = cluster.UpOptions(nodes=args.nodes, roles=args.roles, port=args.port, timeout_s=args.timeout)
    record, was_running = cluster.up(settings.dev.state_dir, options, config_path=_config(args), environ=os.environ,
                                     ensure=ensure, say=_say)
    if was_running:
        print(f"cluster already running ({len(record.nodes)} nodes) at {record.url}; "
              "`aosk cluster status` shows each part, `aosk cluster down` stops it")
        return _status(settings, args)
    paths = cluster.ClusterPaths.of(settings.dev.state_dir)
    print(f"cluster up: {len(record.nodes)} nodes behind nginx")
    print(f"  URL:         {record.url}   (nginx answers /health itself; the API under /api/v1)")
    for node in record.nodes:
        metrics = " ".join(f"{cluster.JOBS[r]}:{p}" for r, p in node.metrics_ports.items())
        print(f"  {node.node_id}:      supervisor pid {node.pid}, API {cluster.HOST}:{node.api_port}, "
              f"metrics {metrics or '(none)'}")
    print(f"  logs:        {paths.root}/node-<n>.log, {paths.nginx}/error.log")
    print(f"  prometheus:  prometheus --config.file={paths.prometheus / 'prometheus.yml'}")
    print("  stop:        aosk cluster down")
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    from aosk import cluster

    record = cluster.down(settings.dev.state_dir, say=_say)
    if record is None:
        print(f"no cluster recorded in {cluster.ClusterPaths.of(settings.dev.state_dir).root}")
        return 0
    print(f"cluster stopped: {len(record.nodes)} nodes and nginx; logs kept in "
          f"{cluster.ClusterPaths.of(settings.dev.state_dir).root}")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from aosk import cluster

    st = cluster.status(settings.dev.state_dir)
    if st is None:
        print(f"no cluster recorded in {cluster.ClusterPaths.of(settings.dev.state_dir).root} (`aosk cluster up`)")
        return 1
    if getattr(args, "format", "text") == "json":
        print(json.dumps(cluster.status_json(st), indent=2))
        return 0 if st.ok else 1
    word = {True: "up", False: "DOWN"}
    for n in st.nodes:
        node = st.record.node(n.node_id)
        print(f"{n.node_id}: supervisor pid {n.pid} {word[n.supervisor_alive]}")
        if n.supervisor_alive:
            kids = ", ".join(f"{name} {pid if pid else 'DOWN'}" for name, pid in sorted(n.children.items()))
            print(f"  children: {kids or '(none started yet)'}")
        if node.api_port is not None:
            print(f"  API {cluster.HOST}:{node.api_port}/api/health: {n.api or 'no answer'}")
        if n.metrics:
            print("  metrics: " + ", ".join(f"{cluster.JOBS[r]}:{node.metrics_ports[r]} {word[ok]}"
                                            for r, ok in n.metrics.items()))
    print(f"nginx: pid {st.record.nginx_pid} {word[st.nginx_alive]}; {st.record.url}/health "
          f"{'answers' if st.nginx_health else 'does not answer'}; /api/health through nginx: "
          f"{st.api_through_nginx or 'no answer'}")
    print("cluster: " + ("everything up" if st.ok else "something is DOWN"))
    return 0 if st.ok else 1


def _kill(settings: Settings, args: argparse.Namespace) -> int:
    from aosk import cluster

    node, count = cluster.kill_node(settings.dev.state_dir, args.node)
    print(f"{node.node_id}: SIGKILLed its process group {node.pid} ({count} processes); "
          f"`aosk cluster start {node.node_id}` brings it back")
    return 0


def _start(settings: Settings, args: argparse.Namespace) -> int:
    from aosk import cluster

    node = cluster.start_again(settings.dev.state_dir, args.node, environ=os.environ, timeout=args.timeout,
                               say=_say)
    if node is None:
        print(f"{args.node} is already running", file=sys.stderr)
        return 0
    print(f"{node.node_id} running again (supervisor pid {node.pid})")
    return 0


