"""How far the journal is judged and projected, and what is stopped: the truth an
operator (``aosk db status``, ``aosk health``) and the API's ``/api/health`` read.

Lag is measured against the broker's end offsets now, never against a watermark a
projector stored at its last commit: a stopped or dead projector stores nothing, so a
stored watermark would show lag 0 exactly when it matters. A partition a projector
stopped (``projector_offsets.stopped_offset``, written by the projector, cleared when it
goes on) is reported as STOPPED with its offset and reason. The workers' progress is
their consumer group's committed offsets; a worker's stop shows here as worker lag that
does not shrink (and in its log and ``aosk_partition_stopped``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import psycopg

from aosk.errors import AoskError, KafkaUnavailable, PostgresUnavailable
from aosk.reads.status import PartitionStatus, ProjectionStatus, projection_status

if TYPE_CHECKING:
    from aosk.config import Settings

__all__ = ["PartitionStatus", "ProjectionStatus", "Health", "broker_offsets", "projection_status", "health",
           "readiness", "LAG_DEGRADED_RECORDS"]

LAG_DEGRADED_RECORDS: Final = 10_000
"""Projector or worker lag (records) above which health says ``degraded``."""


def broker_offsets(bootstrap: str, topic: str, worker_group: str, *, timeout: float = 10.0
                   ) -> tuple[dict[int, int], dict[int, int] | None]:
    """(end offset, worker group's committed offset) per partition of ``topic``, read now
    outside any group; raises ``KafkaUnavailable``. The committed offsets are None when
    the group coordinator does not answer in time (a new cluster creates its offsets
    topic on the first group request): the broker is up, the workers' lag unknown."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from aosk._kafka import cluster_metadata, high_watermark, quiet

    c = Consumer(quiet({"bootstrap.servers": bootstrap, "group.id": worker_group, "enable.auto.commit": False,
                        "client.id": f"aosk-status-{uuid.uuid4().hex[:6]}"}))
    try:
        md = cluster_metadata(c, bootstrap, topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None:
            raise AoskError(f"journal topic {topic} does not exist; run `aosk topics ensure`")
        parts = sorted(md.partitions)
        try:
            ends = {p: high_watermark(c, topic, p, timeout=timeout) for p in parts}
        except KafkaException as e:
            raise KafkaUnavailable(bootstrap, e.args[0].str()) from e
        try:
            got = c.committed([TopicPartition(topic, p) for p in parts], timeout=timeout)
        except KafkaException:
            return ends, None
        return ends, {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        c.close()


Level = Literal["healthy", "degraded", "unhealthy"]


@dataclass
class Health:
    """The body of ``/api/health``: ``{"status": ..., "checks": {...}}``."""

    status: Level
    checks: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks}


def health(*, bootstrap: str, dsn: str, topic: str, worker_group: str, schema: str,
           lag_degraded: int = LAG_DEGRADED_RECORDS, timeout: float = 5.0) -> Health:
    """Readiness of the cluster as seen from here: Kafka (end offsets within ``timeout``),
    PostgreSQL (``select 1``), projector and worker lag, stopped partitions, and
    partitions whose ``events`` history starts late (a projection older than the table).

    Trouble with a shared dependency is ``degraded``, not ``unhealthy``: one bad database
    must not make every replica of a service unready at once. ``unhealthy`` is left to the
    caller (a process that cannot serve at all)."""
    from aosk.projectors.db import connect

    checks: dict[str, dict[str, Any]] = {}
    ends: dict[int, int] | None = None
    judged: dict[int, int] | None = None
    try:
        ends, judged = broker_offsets(bootstrap, topic, worker_group, timeout=timeout)
        checks["kafka"] = {"status": "ok", "partitions": len(ends)}
    except AoskError as e:
        checks["kafka"] = {"status": "error", "error": str(e)}
    status: ProjectionStatus | None = None
    try:
        with connect(dsn, timeout=timeout) as conn:
            conn.execute("select 1")
            checks["postgresql"] = {"status": "ok"}
            exists = conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone()
            if exists:
                status = projection_status(conn, schema, ends=ends, judged=judged)
            else:
                checks["projection"] = {"status": "error", "error": f"schema {schema} does not exist"}
    except PostgresUnavailable as e:
        checks["postgresql"] = {"status": "error", "error": str(e)}
    except psycopg.Error as e:
        checks["postgresql"] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    if status is not None:
        lag, wlag = status.lag, status.worker_lag
        checks["projector_lag"] = {
            "status": "ok" if lag is not None and lag <= lag_degraded else ("unknown" if lag is None else "high"),
            "records": lag, "by_partition": {p.partition: p.lag for p in status.partitions},
        }
        checks["worker_lag"] = {
            "status": "ok" if wlag is not None and wlag <= lag_degraded else ("unknown" if wlag is None else "high"),
            "records": wlag,
        }
        checks["stopped_partitions"] = {
            "status": "ok" if not status.stopped else "stopped",
            "partitions": [{"partition": p.partition, "offset": p.stopped.offset, "reason": p.stopped.reason,
                            "message": p.stopped.message} for p in status.stopped if p.stopped is not None],
        }
        checks["events_history"] = {  # a projection older than the events table (docs/recovery.md)
            "status": "ok" if not status.events_incomplete else "incomplete",
            "partitions": [{"partition": p.partition, "complete_from": p.events_from}
                           for p in status.events_incomplete],
        }
    level: Level = "healthy" if all(c["status"] == "ok" for c in checks.values()) else "degraded"
    return Health(level, checks)


def readiness(settings: Settings, *, schema: str, timeout: float = 2.0) -> Callable[[], dict[str, Any]]:
    """The ``/api/health`` of a metrics port (``aosk.metrics.serve``): ``health`` of the
    cluster ``settings`` name, as the API's route and ``aosk health`` report it."""
    from aosk.endpoints import resolve_endpoints
    from aosk.streams.kafka import group_id

    def check() -> dict[str, Any]:
        ep = resolve_endpoints(settings)
        return health(bootstrap=ep.bootstrap, dsn=ep.dsn, topic=settings.kafka.journal_topic,
                      worker_group=group_id(settings.kafka.topic_prefix), schema=schema, timeout=timeout).to_json()

    return check
