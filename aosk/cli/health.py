"""``aosk health``: the readiness ``/api/health`` reports, from the command line.

Checks Kafka (end offsets within a timeout), PostgreSQL (``select 1``), projector and
worker lag against the broker's end offsets, and partitions a projector stopped.
Prints the same JSON the API serves; the exit code says the level (0 healthy,
1 degraded) so scripts and probes can use it directly.
"""

from __future__ import annotations

import argparse
import json

from aosk.cli._flags import add_format, add_schema
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.status import LAG_DEGRADED_RECORDS

    h = sub.add_parser("health", help="readiness: Kafka, PostgreSQL, lag and stopped partitions "
                       "(what /api/health reports; exit 0 healthy, 1 degraded)")
    add_schema(h)
    add_format(h)
    h.add_argument("--lag-degraded", type=int, default=LAG_DEGRADED_RECORDS, metavar="N",
                   help="lag in records above which the cluster is degraded (default %(default)s)")
    h.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="how long each dependency may take to answer (default %(default)s)")
    h.set_defaults(run=_health)


def _health(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.status import health
    from aosk.streams.kafka import group_id

    ep = resolve_endpoints(settings)
    h = health(bootstrap=ep.bootstrap, dsn=ep.dsn, topic=settings.kafka.journal_topic,
               worker_group=group_id(settings.kafka.topic_prefix), schema=args.schema,
               lag_degraded=args.lag_degraded, timeout=args.timeout)
    if args.format == "json":
        print(json.dumps(h.to_json(), indent=2, sort_keys=True, default=str))
    else:
        print(h.status)
        for name, check in h.checks.items():
            detail = {k: v for k, v in check.items() if k not in ("status", "by_partition")}
            print(f"  {name:20} {check['status']:8} {json.dumps(detail, default=str) if detail else ''}")
    return 0 if h.status == "healthy" else 1
