"""``aosk db migrate | status | thin-checkpoints | digest``: the projection database."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from aosk.cli._flags import add_format, add_schema, param_default, positive_int
from aosk.config import Settings

if TYPE_CHECKING:
    import psycopg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.projectors.checkpoints import thin

    db = sub.add_parser("db", help="the projection database (PostgreSQL)")
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = actions.add_parser("migrate", help="apply pending migrations (projectors also do it at start)")
    add_schema(m)
    m.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="checkpoint every N records of an agent (stored with the schema; default for a new schema: 50)")
    m.set_defaults(run=_migrate)
    s = actions.add_parser("status", help="applied migrations and how far each journal partition is projected")
    add_schema(s)
    s.set_defaults(run=_status)
    t = actions.add_parser("thin-checkpoints", help="delete old interval checkpoints (the journal keeps every point)")
    add_schema(t)
    # Both at least 1 (thin refuses less): the newest checkpoint of an agent is where every
    # time-travel query and fork of its present starts, and "a multiple of 0" means nothing.
    t.add_argument("--keep-last", type=positive_int, default=param_default(thin, "keep_last"), metavar="N",
                   help="newest checkpoints kept per agent, at least 1 (default %(default)s)")
    t.add_argument("--keep-every", type=positive_int, default=param_default(thin, "keep_every"), metavar="N",
                   help="also keep those whose seq is a multiple (default %(default)s)")
    t.set_defaults(run=_thin)
    d = actions.add_parser("digest", help="sha256 per projection table over its deterministic columns "
                           "(equal after a rebuild from the journal)")
    add_schema(d)
    add_format(d)
    d.set_defaults(run=_digest)


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.db import connect

    return connect(resolve_endpoints(settings).dsn)


def connect_schema(settings: Settings, schema: str, *, check_journal: bool = True) -> psycopg.Connection[Any]:
    """A connection for a command that reads ``schema``, after the one check every reader
    makes (``require_schema``): the schema exists and, with ``check_journal``, projects
    this process's journal topic (a command that reads only the schema's own tables,
    like ``db digest``, does not depend on the journal)."""
    from aosk.projectors.db import require_schema

    conn = _connect(settings)
    try:
        require_schema(conn, schema, journal_topic=settings.kafka.journal_topic if check_journal else None)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.projectors.db import migrate

    with _connect(settings) as conn:
        applied = migrate(conn, schema=args.schema, dimension=settings.memory.embedding_dimension,
                          checkpoint_every=args.checkpoint_every, memory_index=settings.memory.index)
    print(f"schema {args.schema}: applied {', '.join(applied)}" if applied else f"schema {args.schema}: up to date")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from psycopg import sql

    from aosk.endpoints import resolve_endpoints
    from aosk.errors import AoskError
    from aosk.projectors.db import qualified
    from aosk.projectors.runner import checkpoint_every_of
    from aosk.reads.status import projection_status
    from aosk.status import broker_offsets
    from aosk.streams.kafka import group_id

    k = settings.kafka
    ends: dict[int, int] | None = None
    judged: dict[int, int] | None = None
    kafka_problem: AoskError | None = None
    try:
        ends, judged = broker_offsets(resolve_endpoints(settings).bootstrap, k.journal_topic, group_id(k.topic_prefix))
    except AoskError as e:
        kafka_problem = e
    with connect_schema(settings, args.schema) as conn:
        for v, name in conn.execute(
            sql.SQL("select version, name from {} order by version").format(qualified(args.schema, "schema_migrations"))
        ):
            print(f"migration {v:04d}_{name}")
        print(f"checkpoint every {checkpoint_every_of(conn, args.schema)} records")
        status = projection_status(conn, args.schema, ends=ends, judged=judged)

    def num(x: int | None) -> str:
        return "?" if x is None else str(x)

    print(f"{'partition':>9} {'projected':>10} {'end':>10} {'lag':>8} {'judged':>10} {'worker lag':>10}  "
          f"{'last record':26}  {'owner':20}  state")
    for p in status.partitions:
        state = "ok" if p.stopped is None else f"STOPPED at {p.stopped.offset}: {p.stopped.reason}"
        if p.events_from:
            state += f"; events from {p.events_from}"
        p_judged, p_lag = (p.judged, p.worker_lag) if status.judged_known else (None, None)
        print(f"{p.partition:>9} {p.projected:>10} {num(p.end):>10} {num(p.lag):>8} {num(p_judged):>10} "
              f"{num(p_lag):>10}  {str(p.last_record_at or '-'):26.26}  {(p.owner or '-'):20.20}  {state}")
    for p in status.stopped:
        assert p.stopped is not None
        print(f"partition {p.partition} STOPPED at offset {p.stopped.offset}: {p.stopped.message}")
    # Not a stop (projection goes on), but reads of the early history are refused until a replay.
    for p in status.events_incomplete:
        print(f"partition {p.partition} EVENTS INCOMPLETE below offset {p.events_from}: projected before events "
              "were stored, so history, streams and time travel that need earlier records are refused; "
              "`aosk replay` rebuilds every projection from the journal, events included (docs/recovery.md, "
              "\"Events missing after an upgrade\")")
    if not status.events_known:
        print(f"events completeness unknown: schema {args.schema} predates migration 0006; "
              f"run `aosk db migrate --schema {args.schema}`")
    if kafka_problem is not None:
        print(f"aosk: end offsets unknown, lag not shown: {kafka_problem}", file=sys.stderr)
        from aosk.cli import exit_code

        return exit_code(kafka_problem)
    # A stopped partition is a problem found, whatever else is fine.
    return 1 if status.stopped else 0


def _thin(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.projectors.checkpoints import thin

    with connect_schema(settings, args.schema, check_journal=False) as conn:
        n = thin(conn, args.schema, keep_last=args.keep_last, keep_every=args.keep_every)
        conn.commit()
    print(f"deleted {n} checkpoints")
    return 0


def _digest(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from aosk.projectors.digest import digest_schema, format_text

    with connect_schema(settings, args.schema, check_journal=False) as conn:
        digests = digest_schema(conn, args.schema)
    if args.format == "json":
        print(json.dumps({"schema": args.schema, "tables": digests}, indent=2, sort_keys=True))
    else:
        print(format_text(args.schema, digests))
    return 0
