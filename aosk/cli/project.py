"""``aosk project``: run a projector (journal -> PostgreSQL). Start it N times to scale."""

from __future__ import annotations

import argparse
import os

from aosk.cli._flags import add_batch_max, add_log_level, add_metrics_port, add_schema, configure_logging, field_default
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.projectors.runner import ProjectorOptions

    p = sub.add_parser(
        "project",
        help="project the journal into PostgreSQL (agent_state, audit_log, checkpoints, memories)",
        description="Consume the journal in the projectors' consumer group, fold every record with the kernel's "
        "apply and write the projections exactly once (rows and offsets in one transaction, fenced by a "
        "compare-and-set). Run several to scale; migrations are applied at start.",
    )
    add_schema(p)
    p.add_argument("--group", metavar="NAME", help="consumer group (default <topic prefix>.projectors.<schema>)")
    add_batch_max(p, default=field_default(ProjectorOptions, "batch_max"), help="most records per transaction")
    p.add_argument("--poll-ms", type=float, default=field_default(ProjectorOptions, "poll_timeout_s") * 1000,
                   metavar="MS", help="how long a batch waits to fill up, in ms (default %(default)s)")
    p.add_argument("--transaction-timeout", type=float,
                   default=field_default(ProjectorOptions, "transaction_timeout_s"), metavar="SECONDS",
                   help="PostgreSQL ends batch transactions older than this, e.g. of a paused process "
                   "(default %(default)s)")
    p.add_argument("--max-cached-agents", type=int, default=field_default(ProjectorOptions, "max_cached_agents"),
                   metavar="N", help="agent states kept in memory between batches (default %(default)s)")
    p.add_argument("--compact-ratio", type=float, default=field_default(ProjectorOptions, "compact_ratio"),
                   metavar="X", help="when idle after a burst, compact agent_state (VACUUM FULL: a short exclusive "
                   "lock) if it is larger on disk than X times its live rows; 0: never (default %(default)s)")
    p.add_argument("--memory-index-check", type=float,
                   default=field_default(ProjectorOptions, "memory_index_check_s"), metavar="SECONDS",
                   help="how often to look whether the memories' IVFFlat index is outgrown by its table (twice "
                   "the rows it was sized for) and build it again beside the projection; 0: never "
                   "(default %(default)s)")
    add_metrics_port(p)
    # A long-running daemon: its start, partition assignments and stops are worth seeing.
    add_log_level(p, default="info")
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.projectors.runner import Projector, ProjectorOptions, install_signal_handlers

    configure_logging(args.log_level)
    if args.metrics_port is not None:
        from aosk.metrics import serve
        from aosk.status import readiness

        serve(args.metrics_port, role="projector", readiness=readiness(settings, schema=args.schema))
    options = ProjectorOptions(
        schema=args.schema,
        group_id=args.group,
        batch_max=args.batch_max,
        poll_timeout_s=args.poll_ms / 1000,
        transaction_timeout_s=args.transaction_timeout,
        max_cached_agents=args.max_cached_agents,
        compact_ratio=args.compact_ratio,
        memory_index_check_s=args.memory_index_check,
        fault=os.environ.get("AOSK_PROJECTOR_FAULT") or None,
    )
    with Projector(settings, options) as projector:
        restore = install_signal_handlers(projector)
        try:
            projector.run()
        finally:
            restore()
    return 0
