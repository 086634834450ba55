"""Reading the projections: agent state, memory recall, read-your-writes.

    from aosk.client import KernelClient, ProjectionReader

    with KernelClient.from_settings(settings) as kernel, ProjectionReader.from_settings(settings) as reader:
        d = kernel.emit(MemoryStored, agent_id="a-1", tenant_id="acme", ...).result()
        reader.wait_until_projected(d.partition, d.offset)       # read your write
        hits = reader.recall(query_embedding, k=5, agent_id="a-1")

``wait_until_projected`` compares ``next_offset > offset`` (offsets have gaps where the
broker wrote transaction markers, so "equal to offset + 1" would wait forever) and sleeps
on PostgreSQL ``LISTEN`` between checks: projectors ``NOTIFY`` after every batch.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from aosk.errors import PostgresUnavailable, ProjectionTimeout
from aosk.reads.agents import AgentView

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from aosk.client._producer import Delivery
    from aosk.config import Settings
    from aosk.journal import JournalReader
    from aosk.projectors.history import PointInTime
    from aosk.reads.memory import Recalled
    from aosk.reads.tasks import TaskView

__all__ = ["ProjectionReader", "AgentView", "ProjectionTimeout", "wait_until_projected"]


class ProjectionReader:
    """Reads one projection schema through a small connection pool."""

    def __init__(self, dsn: str, *, schema: str = "aosk", pool_size: int = 4, bootstrap: str | None = None,
                 journal_topic: str = "aosk.agent-events") -> None:
        from psycopg_pool import ConnectionPool

        from aosk.projectors.db import check_schema_name

        self.schema = check_schema_name(schema)
        self._dsn = dsn
        self._bootstrap, self._journal_topic = bootstrap, journal_topic
        self._journal: JournalReader | None = None
        """Opened at the first read that needs the journal, then reused (one consumer)."""
        self._journal_lock = threading.Lock()
        # autocommit: a read is one round trip per statement (or per pipeline), not BEGIN,
        # statements, COMMIT; reads needing one transaction open ``conn.transaction()``
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, open=False, name="aosk-reader",
                                    kwargs={"autocommit": True}, check=ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=30)
        except Exception as e:
            self._pool.close()
            raise PostgresUnavailable(dsn, str(e) or type(e).__name__) from e

    @classmethod
    def from_settings(cls, settings: Settings, *, schema: str = "aosk") -> ProjectionReader:
        from aosk.endpoints import resolve_endpoints

        pg = settings.storage.postgresql
        ep = resolve_endpoints(settings)
        return cls(ep.dsn, schema=schema, pool_size=max(1, min(pg.pool_size, 8)), bootstrap=ep.bootstrap,
                   journal_topic=settings.kafka.journal_topic)

    # -- reads ------------------------------------------------------------------------

    def agent_state(self, agent_id: str) -> AgentView | None:
        """The projected state of ``agent_id`` (None if the projection has never seen it)."""
        from aosk.reads.agents import agent_view

        with self._pool.connection() as conn:
            return agent_view(conn, self.schema, agent_id)

    def recall(
        self,
        query_embedding: Sequence[float],
        k: int = 10,
        *,
        tenant_id: str | None = None,
        agent_id: str | None = None,
        as_of_offset: int | None = None,
    ) -> list[Recalled]:
        """The ``k`` memories nearest to ``query_embedding`` (cosine distance) within a
        tenant, optionally one agent (an agent alone scopes to its own tenant). Raises
        ``RecallError`` for a query of the wrong dimension or without a scope."""
        from aosk.reads.memory import recall

        with self._pool.connection() as conn:
            return recall(conn, self.schema, query_embedding, k=k, tenant_id=tenant_id, agent_id=agent_id,
                          as_of_offset=as_of_offset)

    def task(self, task_id: str, *, tenant_id: str | None = None, agent_id: str | None = None) -> TaskView | None:
        """The projected task ``task_id`` (status, output or failure, counters, times), of
        ``tenant_id`` / ``agent_id`` when given; None if no projector has folded its
        submission yet. Ids are unique per agent: two agents holding the same id answer the
        one submitted last unless ``agent_id`` says which."""
        from aosk.reads.tasks import task

        with self._pool.connection() as conn:
            return task(conn, self.schema, task_id, tenant_id=tenant_id, agent_id=agent_id)

    def tasks(self, *, tenant_id: str | None = None, agent_id: str | None = None, status: str | None = None,
              after: tuple[str, str] | None = None, limit: int = 50) -> list[TaskView]:
        """Up to ``limit`` projected tasks ordered by (task id, agent id), after the pair
        ``after``; filtered by tenant, agent and status (``pending``, ``running``,
        ``succeeded``, ``failed``, ``cancelled``)."""
        from aosk.reads.tasks import tasks

        with self._pool.connection() as conn:
            return tasks(conn, self.schema, tenant_id=tenant_id, agent_id=agent_id, status=status, after=after,
                         limit=limit)

    def projected_offsets(self) -> dict[int, int]:
        """``next_offset`` of every journal partition (records below it are projected)."""
        from aosk.reads.status import projected_offsets

        with self._pool.connection() as conn:
            return projected_offsets(conn, self.schema)

    def wait_until_projected(self, partition: int, offset: int, *, timeout: float = 30.0) -> None:
        """Return once the journal record at (``partition``, ``offset``) is in every
        projection; ``ProjectionTimeout`` after ``timeout`` seconds."""
        wait_until_projected(self._dsn, self.schema, {partition: offset}, timeout=timeout)

    def wait_for(self, delivery: Delivery, *, timeout: float = 30.0) -> None:
        """``wait_until_projected`` for a produced event's acknowledgement."""
        self.wait_until_projected(delivery.partition, delivery.offset, timeout=timeout)

    def state_at(self, agent_id: str, *, offset: int | None = None, time_ms: int | None = None) -> PointInTime:
        """Time travel: ``agent_id``'s state after the record at ``offset`` of its partition,
        or after its last record with broker time <= ``time_ms``.

        Read from PostgreSQL: the nearest checkpoint at or before the point plus the
        agent's ``events`` rows after it, folded with the kernel's ``apply``
        (``aosk.reads.events.state_at``; for a time, ``offset`` is then the agent's last
        record at or before it). From the journal instead (the nearest checkpoint plus
        the records after it, ``aosk.projectors.history.state_at``), when the projection
        cannot answer: the point is past what it has committed (``ProjectionBehind``),
        the agent has no projected record yet, the schema lacks the rows
        (``HistoryIncomplete``) or a row on the way lost its payload. Both give the same
        state, byte for byte. Without ``bootstrap=`` those cases raise their error."""
        from aosk.projectors.history import projected_state_at

        with self._pool.connection() as conn:
            return projected_state_at(conn, self.schema, agent_id, offset=offset, time_ms=time_ms,
                                      journal=self._lend_journal if self._bootstrap is not None else None)

    @contextmanager
    def _lend_journal(self) -> Iterator[JournalReader]:
        """The reader's one ``JournalReader`` (opened at the first read that needs it), to
        one caller at a time."""
        from aosk.journal import JournalReader

        with self._journal_lock:
            if self._journal is None:
                assert self._bootstrap is not None
                self._journal = JournalReader(self._bootstrap, self._journal_topic)
            yield self._journal

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        with self._journal_lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        self._pool.close()

    def __enter__(self) -> ProjectionReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProjectionReader(schema={self.schema!r})"


def wait_until_projected(dsn: str, schema: str, positions: Mapping[int, int], *, timeout: float) -> None:
    """Return once, for every ``partition -> offset`` in ``positions``, the journal record
    at that offset is in the projection ``schema``; ``ProjectionTimeout`` after ``timeout``
    seconds. Sleeps on the projectors' ``NOTIFY`` (re-checking at least every second)."""
    import psycopg
    from psycopg import sql

    from aosk.projectors.writer import notify_channel
    from aosk.reads.status import projected_offsets

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("listen {}").format(sql.Identifier(notify_channel(schema))))
        while True:
            try:
                have = projected_offsets(conn, schema)
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                have = {}  # projectors not started yet: they migrate the schema at start
            behind = {p: o for p, o in positions.items() if have.get(p, 0) <= o}
            if not behind:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                p, o = min(behind.items())
                raise ProjectionTimeout(
                    f"journal record {p}:{o} not projected within {timeout:g}s (partition {p} is projected up "
                    f"to {have.get(p)}); are projectors running (`aosk project`)?")
            # woken by the projectors' NOTIFY after each batch; re-checked at least every second
            for _ in conn.notifies(timeout=min(left, 1.0), stop_after=1):
                pass
