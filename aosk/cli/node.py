"""``aosk node [--roles api,worker,project,runtime]``: one node as supervised child processes.

Each role is its own ``aosk`` command in a child process (``aosk.node``); a child that
exits is restarted with backoff, SIGTERM stops them all within 20 s. docs/operations.md.
"""

from __future__ import annotations

import argparse
import os

from aosk.cli._flags import add_log_level, configure_logging, field_default, positive_int
from aosk.config import Settings
from aosk.node import ROLES, NodeLayout, Supervisor, node_children, node_environment, parse_roles


def _roles(text: str) -> tuple[str, ...]:
    try:
        return parse_roles(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port_base(text: str) -> int:
    try:
        base = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < base <= 65535 - 4:
        raise argparse.ArgumentTypeError(f"{base}: give a port from 1 to {65535 - 4} (its roles use the next four)")
    return base


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    n = sub.add_parser(
        "node",
        help="run one node: the API, workers, projectors and runtimes as supervised child processes",
        description="Start the node's roles as child processes (aosk api, worker, project, runtime) in one "
        "process group, restart a child that exits (backoff from 1 s doubling to 30 s, logged), and stop them "
        "all on SIGTERM or Ctrl-C (SIGTERM to each, SIGKILL to any left after 20 s). Children die with the "
        "supervisor, even when it is SIGKILLed (Linux). Each role also runs alone as its own command.",
    )
    n.add_argument("--roles", type=_roles, default=ROLES, metavar="LIST",
                   help=f"comma-separated roles to run (default {','.join(ROLES)})")
    n.add_argument("--node-id", metavar="ID",
                   help="this node's name, every child's AOSK_NODE_ID (default: node_id from config / AOSK_NODE_ID)")
    n.add_argument("--host", metavar="H", help="API listen address (default api.host: 0.0.0.0)")
    n.add_argument("--port", type=int, metavar="P", help="API listen port (default api.port: 8080)")
    n.add_argument("--api-workers", type=positive_int, default=field_default(NodeLayout, "api_workers"),
                   metavar="N", help="uvicorn worker processes of the API child (default %(default)s)")
    for role, what in (("worker", "aosk worker"), ("project", "aosk project"), ("runtime", "aosk runtime")):
        n.add_argument(f"--{role}-processes", type=positive_int,
                       default=field_default(NodeLayout, f"{role}_processes"), metavar="N",
                       help=f"{what} processes (default %(default)s)")
    n.add_argument("--metrics-base", type=_port_base, metavar="PORT",
                   help="serve each child's Prometheus metrics (and, for worker, project and runtime, /health and "
                        "/api/health) on PORT+1 api, +2 worker, +3 project, +4 runtime; the k-th process of a role "
                        "100*(k-1) above (9100: the ports of docs/operations.md; default: no metrics)")
    # A supervisor: its children's starts, exits and restarts are worth seeing.
    add_log_level(n, default="info")
    n.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if args.node_id:  # checked as every child will read it: AOSK_NODE_ID
        from aosk.config import load_settings

        settings = load_settings(args.config, environ=dict(os.environ, AOSK_NODE_ID=args.node_id))
    layout = NodeLayout(
        node_id=settings.node_id,
        roles=args.roles,
        api_host=args.host,
        api_port=args.port,
        api_workers=args.api_workers,
        worker_processes=args.worker_processes,
        project_processes=args.project_processes,
        runtime_processes=args.runtime_processes,
        log_level=args.log_level,
        config_path=os.path.abspath(args.config) if getattr(args, "config", None) else None,
        metrics_base=args.metrics_base,
    )
    return Supervisor(node_children(layout), env=node_environment(layout)).run()
