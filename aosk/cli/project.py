"""``aosk project``: run a projector (journal -> PostgreSQL). Start it N times to scale."""

from __future__ import annotations

import argparse
import logging
import os

from aosk.config import Settings
from aosk.projectors.db import DEFAULT_SCHEMA


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "project",
        help="project the journal into PostgreSQL (agent_state, audit_log, checkpoints, memories)",
        description="Consume the journal in the projectors' consumer group, fold every record with the kernel's "
        "apply and write the projections exactly once (rows and offsets in one transaction, fenced by a "
        "compare-and-set). Run several to scale; migrations are applied at start.",
    )
    p.add_argument("--schema", default=DEFAULT_SCHEMA, help="projection schema (default %(default)s)")
    p.add_argument("--group", help="consumer group (default <topic prefix>.projectors.<schema>)")
    p.add_argument("--batch-max", type=int, default=5000, help="most records per transaction (default %(default)s)")
    p.add_argument("--poll-ms", type=int, default=100,
                   help="how long a batch waits to fill up, in ms (default %(default)s)")
    p.add_argument("--transaction-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="PostgreSQL ends batch transactions older than this, e.g. of a paused process "
                   "(default %(default)s)")
    p.add_argument("--max-cached-agents", type=int, default=50_000, metavar="N",
                   help="agent states kept in memory between batches (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.projectors.runner import Projector, ProjectorOptions, install_signal_handlers

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    options = ProjectorOptions(
        schema=args.schema,
        group_id=args.group,
        batch_max=args.batch_max,
        poll_timeout_s=args.poll_ms / 1000,
        transaction_timeout_s=args.transaction_timeout,
        max_cached_agents=args.max_cached_agents,
        fault=os.environ.get("AOSK_PROJECTOR_FAULT") or None,
    )
    projector = Projector(settings, options)
    restore = install_signal_handlers(projector)
    try:
        projector.run()
    finally:
        restore()
    return 0
