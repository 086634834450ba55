"""``aosk worker``: one kernel worker folding the journal (start it N times to scale out).

It ensures the topics exist with the settings the journal needs, then folds until
SIGTERM / SIGINT: a clean stop awaits every output, commits, writes the due snapshots
and leaves the group, within 15 s whatever the broker's state. docs/workers.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from aosk.config import Settings

_LOGLEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from aosk.streams.worker import WorkerOptions

    d = WorkerOptions()
    worker = sub.add_parser("worker", help="run a kernel worker (folds the journal, writes verdicts)")
    worker.add_argument("--node-id", metavar="ID",
                        help="this worker's name (default: node_id from config / AOSK_NODE_ID); "
                             "its Kafka client id is aosk-worker-<ID>")
    worker.add_argument("--log-level", "--loglevel", "-l", dest="log_level", choices=sorted(_LOGLEVELS),
                        default="info")
    worker.add_argument("--batch-max", type=int, default=d.batch_max, metavar="N",
                        help="most records folded in one batch (default %(default)s)")
    worker.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_s * 1000, metavar="MS",
                        help="how long a batch keeps filling after its first record (default %(default)s)")
    worker.add_argument("--commit-interval-ms", type=float, default=d.commit_interval_s * 1000, metavar="MS",
                        help="how often outputs are awaited and offsets committed (default %(default)s)")
    worker.add_argument("--schema", default="aosk",
                        help="projection schema whose checkpoints serve forks from an older seq")
    worker.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.topics import ensure_topics

    logging.basicConfig(level=_LOGLEVELS[args.log_level], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    if args.node_id:
        settings = settings.model_copy(update={"node_id": args.node_id})
    endpoints = resolve_endpoints(settings)
    ensure_topics(endpoints.bootstrap, settings.kafka)

    from aosk.projectors.history import CheckpointPastStates
    from aosk.streams.worker import Worker, WorkerOptions

    # Forks from an older seq: the projection's checkpoints plus the journal after them.
    past = CheckpointPastStates(endpoints.dsn, args.schema, endpoints.bootstrap, settings.kafka.journal_topic)
    worker = Worker(settings, WorkerOptions(node_id=settings.node_id, batch_max=args.batch_max,
                                            batch_wait_s=args.batch_wait_ms / 1000,
                                            commit_interval_s=args.commit_interval_ms / 1000, past_states=past))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    return worker.run()
