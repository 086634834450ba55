"""``aosk state AGENT --at-offset N | --at-time T``: an agent's state at any point."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from aosk.cli._flags import add_format, add_schema
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("state", help="an agent's state at a journal offset or broker time (time travel)")
    p.add_argument("agent", metavar="AGENT")
    at = p.add_mutually_exclusive_group(required=True)
    at.add_argument("--at-offset", type=int, metavar="N", help="after the record at offset N of the agent's partition")
    at.add_argument("--at-time", metavar="T", help="after the last record with broker time <= T "
                    "(epoch milliseconds or ISO-8601, e.g. 2026-11-25T08:30:00Z)")
    add_format(p)
    add_schema(p, help="projection schema holding the checkpoints")
    p.set_defaults(run=_run)


def parse_broker_time(text: str) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 time (UTC if no zone is given)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError("--at-time", f"{text!r} is neither epoch milliseconds nor ISO-8601") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.journal import JournalReader
    from aosk.kernel import encode_state
    from aosk.projectors.db import connect
    from aosk.projectors.history import state_at

    ep = resolve_endpoints(settings)
    time_ms = parse_broker_time(args.at_time) if args.at_time is not None else None
    with connect(ep.dsn) as conn, JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
        point = state_at(conn, args.schema, reader, args.agent, offset=args.at_offset, time_ms=time_ms)
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
