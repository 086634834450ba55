"""``aosk events tail``: decoded journal records, bad ones shown as such (never skipped)."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from aosk.cli._flags import add_agent, add_format
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import AoskError, UnknownFingerprint
from aosk.journal import record_from_message


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="read the journal")
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = actions.add_parser("tail", help="print decoded journal records (follows new ones)")
    add_agent(tail, help="only this agent (reads only its partition)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    tail.add_argument("--max", type=int, metavar="N", help="stop after N records")
    tail.add_argument("--no-follow", action="store_true", help="stop once caught up with the end of the journal")
    add_format(tail)
    tail.set_defaults(run=_tail)


def record_view(msg: Any) -> dict[str, Any]:
    """One journal record as a JSON-ready dict: position, broker time, type and fields."""
    record = record_from_message(msg)
    view: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key,
    }
    if isinstance(record.error, UnknownFingerprint):
        view.update(type=None, error="unknown_fingerprint", fingerprint=record.error.fingerprint.hex(),
                    detail=str(record.error))
    elif record.error is not None:
        view.update(type=None, error="undecodable", detail=str(record.error))
    elif record.event is not None:
        view["type"] = type(record.event).__name__
        view["event"] = _jsonable(dataclasses.asdict(record.event))
    return view


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_text(view: dict[str, Any]) -> str:
    where = f"{view['partition']:>3}:{view['offset']:<8} {view['timestamp']}"
    if view.get("error"):
        return f"{where} {view['key']} !! {view['error']}: {view['detail']}"
    ev = view["event"]
    payload = {k: v for k, v in ev.items() if k not in {"event_id", "agent_id", "tenant_id", "occurred_at",
                                                       "origin", "correlation_id", "causation_id"}}
    return f"{where} {ev['agent_id']} {view['type']} [{ev['origin']}] {json.dumps(payload, ensure_ascii=False)}"


def tail_records(settings: Settings, *, agent: str | None, from_beginning: bool,
                 follow: bool) -> Iterator[dict[str, Any]]:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from aosk._kafka import cluster_metadata, quiet
    from aosk.partitioning import partition_for

    topic = settings.kafka.journal_topic
    bootstrap = resolve_endpoints(settings).bootstrap
    # The journal's partitions, asked with a quiet client: an unreachable broker is then
    # one line and exit 3, not a screen of per-retry librdkafka errors.
    admin = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    md = cluster_metadata(admin, bootstrap, topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        raise AoskError(f"journal topic {topic} does not exist; run `aosk topics ensure`")
    parts = sorted(md.partitions) if agent is None else [partition_for(agent, len(md.partitions))]
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"aosk-tail-{uuid.uuid4().hex[:8]}",  # never committed: assign(), not subscribe()
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "log_level": 3,
    })
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in parts])
        at_end: set[int] = set()
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err, partition = msg.error(), msg.partition()
            if err is not None:
                if err.code() == -191 and partition is not None:  # _PARTITION_EOF names its partition
                    at_end.add(partition)
                    if not follow and at_end >= set(parts):
                        return
                    continue
                raise AoskError(f"reading {topic}: {err.str()}")
            at_end.discard(partition)
            if agent is not None and (msg.key() or b"").decode("utf-8", "replace") != agent:
                continue
            yield record_view(msg)
    finally:
        consumer.close()


def _tail(settings: Settings, args: argparse.Namespace) -> int:
    count = 0
    for view in tail_records(settings, agent=args.agent, from_beginning=args.from_beginning,
                             follow=not args.no_follow):
        line = json.dumps(view, ensure_ascii=False) if args.format == "json" else format_text(view)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        count += 1
        if args.max is not None and count >= args.max:
            break
    return 0


__all__ = ["record_view", "tail_records"]
