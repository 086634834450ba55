"""How much of the ``events`` projection is there (``events_coverage``, migration 0006).

A schema projected before migration 0005 has ``audit_log`` rows for its early records
but no ``events`` rows: the bodies were only in Kafka then. ``events_coverage`` records,
per journal partition, the offset from which ``events`` is complete (no row: from 0, as
in every schema built from scratch, ``aosk replay``'s included). The readers of
``events`` (``aosk.reads.events``) ask here before they list or fold, and refuse with
``HistoryIncomplete`` a read that needs a row below it: a partial history returned as
if it were whole (a state folded from the wrong records, a stream starting late) is
worse than an error naming the remedy.

The check of an agent costs one index lookup when nothing is missing: the agent's first
record (``audit_log``, by ``(agent_id, seq)``, which has every record) against its
partition's ``complete_from``. Only an agent with records below it costs a second one,
to find the last of them (its records are on one partition, their offsets grow with
their seq).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import HistoryIncomplete
from aosk.projectors.db import qualified
from aosk.projectors.rows import storage_key

__all__ = ["EventsGap", "HistoryIncomplete", "incomplete_partitions", "complete_from", "events_gap",
           "require_events"]

_NO_SEQ: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EventsGap:
    """An agent with records that have no ``events`` row."""

    agent_id: str
    partition: int
    complete_from: int
    """Its partition's ``events_coverage.complete_from``."""
    first_offset: int
    """Its first record's offset (below ``complete_from``)."""
    last_seq: int
    """The seq of its last record below ``complete_from``: records after it have rows."""
    last_offset: int
    """That record's offset."""

    def refuse(self, what: str, offset: int | None = None) -> HistoryIncomplete:
        return HistoryIncomplete(self.partition, self.complete_from,
                                 self.first_offset if offset is None else offset, what=what)


def incomplete_partitions(conn: psycopg.Connection[Any], schema: str) -> dict[int, int] | None:
    """``{partition: complete_from}`` of every partition whose ``events`` lacks rows
    (empty: complete); None when ``schema`` predates migration 0006 (not known)."""
    found = conn.execute(
        "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = 'events_coverage'", (schema,)).fetchone()
    if found is None:
        return None
    rows = conn.execute(sql.SQL("select partition, complete_from from {} where complete_from > 0 "
                                "order by partition").format(qualified(schema, "events_coverage"))).fetchall()
    return {int(p): int(c) for p, c in rows}


def complete_from(conn: psycopg.Connection[Any], schema: str, partition: int) -> int:
    """The offset of ``partition`` from which ``events`` has every record (0: all of it)."""
    row = conn.execute(sql.SQL("select complete_from from {} where partition = %s").format(
        qualified(schema, "events_coverage")), (partition,)).fetchone()
    return 0 if row is None else int(row[0])


def events_gap(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> EventsGap | None:
    """``agent_id``'s records without ``events`` rows (None: it has none, or no records)."""
    key = storage_key(agent_id)
    audit = qualified(schema, "audit_log")
    row = conn.execute(
        sql.SQL("select f.journal_partition, f.journal_offset, c.complete_from from "
                "(select journal_partition, journal_offset from {} where agent_id = %s order by seq limit 1) f "
                "join {} c on c.partition = f.journal_partition and c.complete_from > f.journal_offset").format(
            audit, qualified(schema, "events_coverage")),
        (key,),
    ).fetchone()
    if row is None:
        return None
    partition, first, cf = int(row[0]), int(row[1]), int(row[2])
    last = conn.execute(
        sql.SQL("select seq, journal_offset from {} where agent_id = %s and seq < coalesce("
                "(select seq from {} where agent_id = %s and journal_offset >= %s order by journal_offset limit 1), "
                "%s) order by seq desc limit 1").format(audit, qualified(schema, "events")),
        (key, key, cf, _NO_SEQ),
    ).fetchone()
    assert last is not None  # the first record is below complete_from
    return EventsGap(agent_id, partition, cf, first, int(last[0]), int(last[1]))


def require_events(conn: psycopg.Connection[Any], schema: str, agent_id: str, *, after_seq: int | None = None,
                   after_offset: int | None = None, what: str) -> None:
    """``HistoryIncomplete`` unless ``events`` has every record of ``agent_id`` after
    ``after_seq`` / ``after_offset`` (neither: every record of it). ``what`` names the
    read in the message."""
    gap = events_gap(conn, schema, agent_id)
    if gap is None:
        return
    if after_seq is not None and after_seq >= gap.last_seq:
        return
    if after_offset is not None and after_offset >= gap.last_offset:
        return
    raise gap.refuse(what, None if after_offset is None else max(gap.first_offset, after_offset + 1))
