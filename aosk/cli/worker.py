"""``aosk worker``: one kernel worker folding the journal (start it N times to scale out).

It ensures the topics exist with the settings the journal needs, then folds until
SIGTERM / SIGINT: a clean stop awaits every output, commits, writes the due snapshots
and leaves the group, within 15 s whatever the broker's state. docs/workers.md.
"""

from __future__ import annotations

import argparse
import signal

from aosk.cli._flags import add_batch_max, add_log_level, add_metrics_port, add_schema, configure_logging, field_default
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.streams.worker import WorkerOptions

    worker = sub.add_parser("worker", help="run a kernel worker (folds the journal, writes verdicts)")
    worker.add_argument("--node-id", metavar="ID",
                        help="this worker's name (default: node_id from config / AOSK_NODE_ID); "
                             "its Kafka client id is aosk-worker-<ID>")
    add_metrics_port(worker)
    # A long-running daemon: its start, partition assignments and stops are worth seeing.
    add_log_level(worker, default="info")
    add_batch_max(worker, default=field_default(WorkerOptions, "batch_max"), help="most records folded in one batch")
    worker.add_argument("--batch-wait-ms", type=float, default=field_default(WorkerOptions, "batch_wait_s") * 1000,
                        metavar="MS",
                        help="how long a batch keeps filling after its first record (default %(default)s)")
    worker.add_argument("--commit-interval-ms", type=float,
                        default=field_default(WorkerOptions, "commit_interval_s") * 1000, metavar="MS",
                        help="how often outputs are awaited and offsets committed (default %(default)s)")
    add_schema(worker, help="projection schema whose checkpoints serve forks from an older seq")
    worker.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.topics import ensure_topics

    configure_logging(args.log_level)
    if args.node_id:
        settings = settings.model_copy(update={"node_id": args.node_id})
    if args.metrics_port is not None:
        from aosk.metrics import serve
        from aosk.status import readiness

        serve(args.metrics_port, role="worker", readiness=readiness(settings, schema=args.schema))
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
