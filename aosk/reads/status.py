"""The projection's own progress and what it holds per tenant: ``projector_offsets``
(next offset, stops), ``events_coverage`` (``aosk.reads.coverage``) and
``agents_by_status``; the reads behind ``aosk db status``, ``/api/health``,
``/api/v1/status`` and read-your-writes waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aosk.projectors.db import qualified
from aosk.reads.coverage import incomplete_partitions

__all__ = ["Stopped", "PartitionStatus", "ProjectionStatus", "projection_status", "projected_offsets",
           "agents_by_status", "projected_records"]


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
    events_from: int = 0
    """The offset from which the ``events`` projection has every record (0: all of it;
    more on a schema projected before events were stored: ``aosk replay`` completes it)."""

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
    events_known: bool = True
    """False: the schema predates ``events_coverage`` (migration 0006), completeness unknown."""
    judged_known: bool = True
    """False: the workers' committed offsets could not be read (their lag is unknown)."""

    @property
    def stopped(self) -> list[PartitionStatus]:
        return [p for p in self.partitions if p.stopped is not None]

    @property
    def events_incomplete(self) -> list[PartitionStatus]:
        """Partitions whose ``events`` rows start above offset 0."""
        return [p for p in self.partitions if p.events_from > 0]

    @property
    def lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)

    @property
    def worker_lag(self) -> int | None:
        if not self.judged_known:
            return None
        lags = [p.worker_lag for p in self.partitions]
        return None if any(x is None for x in lags) else sum(x for x in lags if x is not None)



def projection_status(conn: psycopg.Connection[Any], schema: str, *, ends: dict[int, int] | None,
                      judged: dict[int, int] | None = None, kafka_problem: str | None = None) -> ProjectionStatus:
    """Each partition of ``schema``'s projection against the broker's ``ends`` (None: unknown)."""
    out = ProjectionStatus(schema, kafka_problem=kafka_problem)
    incomplete = incomplete_partitions(conn, schema)
    out.events_known = incomplete is not None
    out.judged_known = judged is not None
    rows = conn.execute(
        sql.SQL("select partition, next_offset, last_record_at, owner, stopped_offset, stop_reason, stop_message "
                "from {} order by partition").format(qualified(schema, "projector_offsets"))
    ).fetchall()
    for p, nxt, last, owner, s_off, s_reason, s_msg in rows:
        # A stop below next_offset is stale: a later projector got past the record.
        stopped = Stopped(int(s_off), s_reason or "error", s_msg or "") if s_off is not None and s_off >= nxt else None
        out.partitions.append(PartitionStatus(
            int(p), int(nxt), None if ends is None else ends.get(int(p)),
            None if judged is None else judged.get(int(p)), last, owner, stopped,
            (incomplete or {}).get(int(p), 0)))
    return out


def projected_offsets(conn: psycopg.Connection[Any], schema: str) -> dict[int, int]:
    """``next_offset`` of every journal partition (records below it are projected)."""
    rows = conn.execute(sql.SQL("select partition, next_offset from {}").format(
        qualified(schema, "projector_offsets"))).fetchall()
    return {int(p): int(o) for p, o in rows}


def agents_by_status(conn: psycopg.Connection[Any], schema: str, tenant_id: str) -> dict[str, int]:
    """How many of ``tenant_id``'s agents are in each status."""
    rows = conn.execute(sql.SQL("select status, agents from {} where tenant_id = %s order by status").format(
        qualified(schema, "agents_by_status")), (tenant_id,)).fetchall()
    return {s: int(n) for s, n in rows}


def projected_records(conn: psycopg.Connection[Any], schema: str) -> int:
    """Journal records projected, over every partition (the sum of next offsets)."""
    return sum(projected_offsets(conn, schema).values())
