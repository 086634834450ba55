"""``aosk state AGENT --at-offset N | --at-time T``: an agent's state at any point."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from aosk.cli._flags import add_format, add_schema, journal_offset
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints

AT_TIME_FORMATS = "epoch milliseconds (e.g. 1795595400000) or ISO 8601 (e.g. 2026-11-25T08:30:00Z; UTC if no zone)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("state", help="an agent's state at a journal offset or broker time (time travel)")
    p.add_argument("agent", metavar="AGENT")
    at = p.add_mutually_exclusive_group(required=True)
    at.add_argument("--at-offset", type=journal_offset, metavar="N",
                    help="after the record at offset N (>= 0) of the agent's partition")
    at.add_argument("--at-time", type=at_time, metavar="T",
                    help=f"after the last record with broker time <= T, not in the future: {AT_TIME_FORMATS}")
    add_format(p)
    add_schema(p, help="projection schema holding the checkpoints")
    p.set_defaults(run=_run)


def parse_broker_time(text: str) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 time (UTC if no zone is given);
    ``ValueError`` naming the accepted formats otherwise."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time; give {AT_TIME_FORMATS}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def at_time(text: str, *, now_ms: int | None = None) -> int:
    """argparse ``type=`` of ``--at-time``: epoch milliseconds of a time not in the
    future (the journal has nothing after now, and later records could still land at
    or before a future time, so its state would not be a fixed point of history)."""
    try:
        ms = parse_broker_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if ms < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is before 1970; give {AT_TIME_FORMATS}")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if ms > now:
        when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        raise argparse.ArgumentTypeError(f"{text!r} ({when}) is in the future; give a time up to now")
    return ms


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.journal import JournalReader
    from aosk.kernel import encode_state
    from aosk.projectors.db import connect, require_schema
    from aosk.projectors.history import projected_state_at

    ep = resolve_endpoints(settings)
    topic = settings.kafka.journal_topic
    with connect(ep.dsn) as conn:
        require_schema(conn, args.schema, journal_topic=topic)
        # the projection answers what it has; the journal the rest (a point past it included)
        point = projected_state_at(conn, args.schema, args.agent, offset=args.at_offset, time_ms=args.at_time,
                                   journal=lambda: JournalReader(ep.bootstrap, topic))
    state = json.loads(encode_state(point.state))
    if args.format == "json":
        print(json.dumps({
            "agent_id": point.agent_id, "partition": point.partition, "offset": point.offset,
            "state_hash": point.state_hash.hex(), "checkpoint_seq": point.checkpoint_seq,
            "folded_records": point.folded, "state": state,
        }, ensure_ascii=False))
        return 0
    print(f"{point.agent_id} at partition {point.partition}, offset {point.offset}")
    print(f"  status {point.state.status}, seq {point.state.seq}, state hash {point.state_hash.hex()[:16]}...")
    origin = f"checkpoint at seq {point.checkpoint_seq}" if point.checkpoint_seq is not None else "the beginning"
    print(f"  from {origin} + {point.folded} records folded")
    return 0
