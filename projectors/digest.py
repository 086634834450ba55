"""``aosk db digest``: one sha256 per projection table over its deterministic columns.

A rebuild from the journal (``aosk replay``) must produce identical projections
(invariant 4): the digest of each table is taken over the columns listed below, rows
in natural-key order, so two schemas built from the same journal give the same digests
whatever the batch sizes, process counts or crashes on the way. Operational columns
(when a batch was committed, by which process, the broker's high watermark then) are
left out; every other column is derived from the journal alone (timestamps come from
the records' LogAppendTime).

Rows are streamed from a server-side cursor as PostgreSQL's text form of the row
(``(c1,c2,...)::text``) and hashed in Python, one line per row, so a table of any size
is digested in constant memory. The session's ``TimeZone``, ``DateStyle``,
``IntervalStyle``, ``extra_float_digits`` and ``bytea_output`` are pinned so the text
form does not depend on the server's or the role's settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.projectors.db import check_schema_name, qualified

__all__ = ["DIGEST_TABLES", "DIGEST_EXCLUDED", "digest_schema", "digest_table", "schema_exists", "format_text"]

# table -> (natural key, digested columns). None: every column of the table but those
# of DIGEST_EXCLUDED.
DIGEST_TABLES: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...] | None]]] = {
    "agent_state": (("agent_id",), None),
    "audit_log": (("journal_partition", "journal_offset"), None),
    "checkpoints": (("agent_id", "seq"), None),
    "memories": (("agent_id", "memory_id"), None),
    "events": (("journal_partition", "journal_offset"), None),
    "tasks": (("agent_id", "task_id"), None),
    "projector_offsets": (("partition",), ("partition", "next_offset")),
}
"""Excluded: ``projector_offsets.high_watermark / last_record_at / committed_at / owner``
(operational; ``last_record_at`` depends on batch boundaries), and ``events_coverage``
(migration 0006): on a schema projected before events were stored it records where the
upgrade found the projection, not a function of the journal (a rebuild has no rows)."""

DIGEST_EXCLUDED: Final[Mapping[str, frozenset[str]]] = {
    # The state hash is recorded on the last record of each agent in a batch (the state
    # agent_state then holds) and on checkpoint records: true wherever it is set, but
    # which records are last in a batch depends on batch sizes and timing, so a live
    # projection and a rebuild set it on different rows. (Recording it on every row would
    # hash every state the fold passes through; clearing it on the previous head would
    # update audit_log once per agent and batch.) aosk audit verify checks it instead.
    "audit_log": frozenset({"state_hash"}),
}
"""Columns left out of a table digested with "every column"."""

_SESSION: Final = (
    "set local timezone = 'UTC'",
    "set local datestyle = 'ISO, YMD'",
    "set local intervalstyle = 'postgres'",
    "set local extra_float_digits = 1",
    "set local bytea_output = 'hex'",
)


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    return conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone() is not None


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "select a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (schema, table),
    ).fetchall()
    return [str(r[0]) for r in rows]


def digest_table(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[str, int]:
    """(hex sha256, rows) of ``schema.table``; runs inside the caller's transaction."""
    key, cols = DIGEST_TABLES[table]
    skip = DIGEST_EXCLUDED.get(table, frozenset())
    columns = list(cols) if cols is not None else [c for c in _columns(conn, schema, table) if c not in skip]
    if not columns:
        raise LookupError(f"table {schema}.{table} does not exist")
    q = sql.SQL("select ({})::text from {} order by {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        qualified(schema, table),
        sql.SQL(", ").join(sql.Identifier(k) for k in key),
    )
    h = hashlib.sha256()
    h.update((table + ":" + ",".join(columns) + "\n").encode())
    n = 0
    with conn.cursor(name=f"aosk_digest_{table}") as cur:
        cur.itersize = 5000
        cur.execute(q)
        for (text,) in cur:
            h.update(text.encode())
            h.update(b"\n")
            n += 1
    return h.hexdigest(), n


def digest_schema(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, Any]]:
    """``{table: {"sha256": hex, "rows": n}}`` for every table of ``DIGEST_TABLES``, read
    in one repeatable-read snapshot (consistent even while projectors write)."""
    check_schema_name(schema)
    out: dict[str, dict[str, Any]] = {}
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        for s in _SESSION:
            conn.execute(s)
        for table in DIGEST_TABLES:
            sha, n = digest_table(conn, schema, table)
            out[table] = {"sha256": sha, "rows": n}
    return out


def format_text(schema: str, digests: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"schema {schema}"]
    for table, d in digests.items():
        lines.append(f"{table:<18} {d['sha256']}  {d['rows']:>10} rows")
    return "\n".join(lines)
