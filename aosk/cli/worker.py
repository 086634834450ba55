"""``aosk worker``: one faust worker folding the journal (start it N times to scale out).

It ensures the topics exist with the settings the journal needs, then runs the faust
worker in the foreground until SIGTERM / SIGINT (a clean stop: in-flight records
finish, the producer is flushed, offsets are committed). docs/workers.md has the rest.
"""

from __future__ import annotations

import argparse

from aosk.config import Settings

_LOGLEVELS = ("crit", "error", "warn", "info", "debug")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = sub.add_parser("worker", help="run a stream worker (folds the journal, writes verdicts)")
    worker.add_argument("--node-id", metavar="ID",
                        help="this worker's name (default: node_id from config / AOSK_NODE_ID); "
                             "its data directory is <state_dir>/worker/<ID>")
    worker.add_argument("--web-port", type=int, metavar="PORT",
                        help="serve faust's web endpoints on PORT (default: off, so several "
                             "workers can share a host)")
    worker.add_argument("--loglevel", "-l", choices=_LOGLEVELS, default="info")
    worker.add_argument("--schema", default="aosk",
                        help="projection schema whose checkpoints serve forks from an older seq")
    worker.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.topics import ensure_topics

    if args.node_id:
        settings = settings.model_copy(update={"node_id": args.node_id})
    endpoints = resolve_endpoints(settings)
    ensure_topics(endpoints.bootstrap, settings.kafka)

    import faust

    from aosk.projectors.history import CheckpointPastStates
    from aosk.streams.app import WorkerOptions, create_app

    # Forks from an older seq: the projection's checkpoints plus the journal after them.
    past = CheckpointPastStates(endpoints.dsn, args.schema, endpoints.bootstrap, settings.kafka.journal_topic)
    app = create_app(settings, WorkerOptions(node_id=settings.node_id, web_port=args.web_port, past_states=past))
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns only by SystemExit, after a clean stop
    return 0  # pragma: no cover
