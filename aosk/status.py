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
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

from aosk.errors import AoskError, KafkaUnavailable, PostgresUnavailable

__all__ = ["PartitionStatus", "ProjectionStatus", "Health", "broker_offsets", "projection_status", "health",
           "LAG_DEGRADED_RECORDS"]

LAG_DEGRADED_RECORDS: Final = 10_000
"""Projector or worker lag (records) above which health says ``degraded``."""


@dataclass(frozen=True, slots=True)
class Stopped:
    offset: int
    reason: str
    """``unknown_fingerprint`` | ``unknown_fold_version`` | ``moved_key`` | ``offset_out_of_range`` | ``error``."""
    message: str


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    projected: int
    """The projection's next offset (``projector_offsets.next_offset``)."""
    end: int | None
    """The broker's end offset now (None: not known, Kafka unreachable)."""
    judged: int | None
    """The workers' committed offset (None: never committed, or not known)."""
    last_record_at: Any
    owner: str | None
    stopped: Stopped | None

    @property
    def lag(self) -> int | None:
        """Records not projected yet."""
        return None if self.end is None else max(self.end - self.projected, 0)

    @property
    def worker_lag(self) -> int | None:
        """Records not judged (committed by a worker) yet."""
        return None if self.end is None else max(self.end - (self.judged or 0), 0)


@dataclass
class ProjectionStatus:
    schema: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    kafka_problem: str | None = None
    """Why end offsets are unknown (Kafka unreachable), or None."""

    @property
    def stopped(self) -> list[PartitionStatus]:
        return [p for p in self.partitions if p.stopped is not None]

    @property
    def lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)

    @property
    def worker_lag(self) -> int | None:
        lags = [p.worker_lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)


def broker_offsets(bootstrap: str, topic: str, worker_group: str, *, timeout: float = 10.0
                   ) -> tuple[dict[int, int], dict[int, int]]:
    """(end offset, worker group's committed offset) per partition of ``topic``, read now
    outside any group; raises ``KafkaUnavailable``."""
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
            got = c.committed([TopicPartition(topic, p) for p in parts], timeout=timeout)
        except KafkaException as e:
            raise KafkaUnavailable(bootstrap, e.args[0].str()) from e
        committed = {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        return ends, committed
    finally:
        c.close()


def projection_status(conn: psycopg.Connection[Any], schema: str, *, ends: dict[int, int] | None,
                      judged: dict[int, int] | None = None, kafka_problem: str | None = None) -> ProjectionStatus:
    """Each partition of ``schema``'s projection against the broker's ``ends`` (None: unknown)."""
    from aosk.projectors.db import qualified

    out = ProjectionStatus(schema, kafka_problem=kafka_problem)
    rows = conn.execute(
        sql.SQL("select partition, next_offset, last_record_at, owner, stopped_offset, stop_reason, stop_message "
                "from {} order by partition").format(qualified(schema, "projector_offsets"))
    ).fetchall()
    for p, nxt, last, owner, s_off, s_reason, s_msg in rows:
        # A stop below next_offset is stale: a later projector got past the record.
        stopped = Stopped(int(s_off), s_reason or "error", s_msg or "") if s_off is not None and s_off >= nxt else None
        out.partitions.append(PartitionStatus(
            int(p), int(nxt), None if ends is None else ends.get(int(p)),
            None if judged is None else judged.get(int(p)), last, owner, stopped))
    return out


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
    PostgreSQL (``select 1``), projector and worker lag, stopped partitions.

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
    level: Level = "healthy" if all(c["status"] == "ok" for c in checks.values()) else "degraded"
    return Health(level, checks)
