"""Connections and versioned migrations of the projection database.

Every projection table, view and the ``projector_offsets`` table live in ONE schema
(default ``aosk``), never in ``public``: ``aosk replay`` builds a shadow schema and
swaps it in by renaming, so everything that must move together has to be inside it.
Migrations are plain SQL files ``NNNN_name.sql`` applied in order with
``search_path`` set to the target schema, recorded in ``<schema>.schema_migrations``.
Code that writes or reads projections takes the schema name as an argument and
qualifies every table with it, so the same code serves the live schema and a shadow.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from aosk._quiet import Backoff, OutageFilter, OutageLog
from aosk.config import MemoryIndex, PostgresSettings
from aosk.errors import JournalMismatch, MigrationError, PostgresUnavailable, ProjectionConfigError, SchemaNotFound
from aosk.projectors.memory_index import ensure as ensure_memory_index

__all__ = [
    "DEFAULT_SCHEMA",
    "DEFAULT_CHECKPOINT_EVERY",
    "BATCH_LOCK_KEY",
    "MigrationError",
    "ProjectionConfigError",
    "SchemaNotFound",
    "JournalMismatch",
    "require_schema",
    "check_journal_topic",
    "Migration",
    "migrations",
    "migrate",
    "open_pool",
    "connect",
    "qualified",
    "get_meta",
    "set_meta",
    "ensure_offset_rows",
    "embedding_dimension",
    "PackedVector",
    "pack_vector",
    "register_vector_dumper",
]

DEFAULT_SCHEMA: Final = "aosk"

BATCH_LOCK_KEY: Final = 0x414F_534B_5052_4F4A
"""``pg_advisory_xact_lock_shared(BATCH_LOCK_KEY)`` is taken by every projector batch
transaction ("AOSKPROJ" as a bigint). ``aosk replay`` takes it exclusively for the swap
of a rebuilt schema, which therefore happens between two live batches."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ProjectionConfigError(
            f"schema name {schema!r} must be lower-case letters, digits and _ (at most 63), starting with a letter"
        )
    return schema


def qualified(schema: str, table: str) -> sql.Composed:
    """``"schema"."table"`` for composing statements."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def migrations() -> list[Migration]:
    """The SQL migrations shipped in aosk.projectors/migrations, in version order."""
    found = []
    for entry in resources.files("aosk.projectors").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


DEFAULT_CHECKPOINT_EVERY: Final = 50
"""Records of an agent between checkpoints in a schema created without another
``checkpoint_every``: a point-in-time read (``state_at``) folds at most 49 records after
its checkpoint (p99 4.7 ms against 9.4 ms with 100, for 0.13x instead of 0.07x of the
``events`` table's bytes in checkpoints; docs/benchmarks.md "Reads"). A schema created
before it keeps what it has (the fold version's 100 when none was recorded)."""


def migrate(
    conn: psycopg.Connection[Any],
    *,
    schema: str = DEFAULT_SCHEMA,
    dimension: int = 384,
    checkpoint_every: int | None = None,
    memory_index: MemoryIndex | None = None,
) -> list[str]:
    """Apply pending migrations to ``schema`` (created if missing) in one transaction;
    returns the names applied. ``memory_index`` (``memory.index``): replace the memories'
    vector index by one of this kind if it has one of another kind (``memory_index.ensure``;
    the migrations leave the default's). Safe to run concurrently from several processes: an
    advisory lock serialises them. ``checkpoint_every`` (records per agent between
    checkpoints) is recorded in ``projection_meta`` when given (``DEFAULT_CHECKPOINT_EVERY``
    for a new schema without it); it must be the same for
    every projector and rebuild of the schema, hence stored there, not per process.
    Checks that an existing schema's embedding dimension is ``dimension``."""
    check_schema_name(schema)
    applied: list[str] = []
    known = migrations()
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('aosk-migrate'), hashtext(%s))", (schema,))
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        conn.execute("create extension if not exists vector")
        conn.execute(
            sql.SQL(
                "create table if not exists {} (version int primary key, name text not null, checksum text not null)"
            ).format(qualified(schema, "schema_migrations"))
        )
        done = {
            row[0]: row[2]
            for row in conn.execute(
                sql.SQL("select version, name, checksum from {}").format(qualified(schema, "schema_migrations"))
            )
        }
        newer = sorted(v for v in done if v not in {m.version for m in known})
        if newer:
            raise MigrationError(f"schema {schema} has migrations {newer} this AOSK does not know; upgrade AOSK")
        for m in known:
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was changed after it was applied to {schema}; "
                        "ship changes as a new migration"
                    )
                continue
            conn.execute(sql.SQL("set local search_path to {}, public").format(sql.Identifier(schema)))
            try:
                conn.execute(m.sql.replace("{dimension}", str(int(dimension))).encode())
            except psycopg.Error as e:
                raise MigrationError(f"migration {m.version:04d}_{m.name} failed on schema {schema}: {e}") from e
            conn.execute(
                sql.SQL("insert into {} values (%s, %s, %s)").format(qualified(schema, "schema_migrations")),
                (m.version, m.name, m.checksum),
            )
            applied.append(f"{m.version:04d}_{m.name}")
        if checkpoint_every is None and not done:  # a new schema
            checkpoint_every = DEFAULT_CHECKPOINT_EVERY
        if checkpoint_every is not None:
            if checkpoint_every < 1:
                raise ProjectionConfigError("checkpoint_every must be >= 1")
            set_meta(conn, schema, "checkpoint_every", str(checkpoint_every))
        have = embedding_dimension(conn, schema)
        if memory_index is not None and have == dimension and ensure_memory_index(conn, schema, memory_index, have):
            applied.append(f"memory index {memory_index}")
        if have != dimension:
            raise ProjectionConfigError(
                f"schema {schema} stores embeddings of dimension {have}, this process is configured for "
                f"{dimension} (memory.embedding_dimension / AOSK_EMBEDDING_DIMENSION); the dimension is fixed "
                "per cluster"
            )
    return applied


def require_schema(conn: psycopg.Connection[Any], schema: str, *, journal_topic: str | None = None) -> None:
    """The check every reader of a projection schema makes first: ``SchemaNotFound`` if
    ``schema`` was never migrated (no ``schema_migrations`` table: absent, or another
    application's), and with ``journal_topic`` the check projectors make at start
    (``check_journal_topic``), so a reader refuses a schema of another journal as they do."""
    found = conn.execute(
        "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = 'schema_migrations'",
        (schema,),
    ).fetchone()
    if found is None:
        raise SchemaNotFound(schema)
    if journal_topic is not None:
        check_journal_topic(conn, schema, journal_topic)


def check_journal_topic(conn: psycopg.Connection[Any], schema: str, journal_topic: str) -> str | None:
    """The journal topic recorded for ``schema`` (None: none yet); ``JournalMismatch``
    if it is not ``journal_topic``. Projectors record it when it is None."""
    try:
        recorded = get_meta(conn, schema, "journal_topic")
    except psycopg.errors.UndefinedTable:  # a schema migrated before projection_meta existed
        conn.rollback()
        return None
    if recorded is not None and recorded != journal_topic:
        raise JournalMismatch(schema, recorded, journal_topic)
    return recorded


def get_meta(conn: psycopg.Connection[Any], schema: str, key: str) -> str | None:
    row = conn.execute(
        sql.SQL("select value from {} where key = %s").format(qualified(schema, "projection_meta")), (key,)
    ).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: psycopg.Connection[Any], schema: str, key: str, value: str) -> None:
    conn.execute(
        sql.SQL(
            "insert into {} (key, value) values (%s, %s) on conflict (key) do update set value = excluded.value"
        ).format(qualified(schema, "projection_meta")),
        (key, value),
    )


def embedding_dimension(conn: psycopg.Connection[Any], schema: str) -> int:
    """The d of ``<schema>.memories.embedding vector(d)``."""
    row = conn.execute(
        "select a.atttypmod from pg_attribute a join pg_class c on c.oid = a.attrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = 'memories' and a.attname = 'embedding'",
        (schema,),
    ).fetchone()
    if row is None:
        raise ProjectionConfigError(f"schema {schema} has no memories table; run `aosk db migrate --schema {schema}`")
    return int(row[0])


# --- vectors ------------------------------------------------------------------------------


class PackedVector(bytes):
    """A pgvector ``vector`` already in its binary wire form (u16 dim, u16 0, f32 BE...)."""

    __slots__ = ()


_BIG_ENDIAN = sys.byteorder == "big"


def pack_vector(values: Sequence[float]) -> PackedVector:
    """The binary form of ``values`` as float32 (what pgvector stores)."""
    a = array("f", values)
    if not _BIG_ENDIAN:
        a.byteswap()
    return PackedVector(struct.pack(">HH", len(a), 0) + a.tobytes())


def register_vector_dumper(conn: psycopg.Connection[Any]) -> int:
    """Let ``conn`` send ``PackedVector`` values (parameters and binary COPY) as
    ``vector``; returns the type's oid."""
    row = conn.execute("select 'vector'::regtype::oid").fetchone()
    assert row is not None
    oid = int(row[0])

    class _VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            return bytes(obj)

    _VectorDumper.oid = oid
    conn.adapters.register_dumper(PackedVector, _VectorDumper)
    return oid


# --- pools ------------------------------------------------------------------------------


def open_pool(
    dsn: str,
    pg: PostgresSettings,
    *,
    name: str = "aosk",
    min_size: int = 1,
    max_size: int | None = None,
    configure: Callable[[psycopg.Connection[Any]], None] | None = None,
    autocommit: bool = False,
) -> ConnectionPool:
    """A psycopg pool sized by ``pool_size`` + ``max_overflow`` (or ``max_size``);
    opened, ready to use. Connections are checked before they are handed out, so a
    connection the server closed (e.g. a paused process's timed-out transaction) is
    replaced instead of failing the next batch. ``autocommit``: each statement commits
    by itself (one round trip instead of BEGIN, statement, COMMIT); a caller needing
    several statements in one transaction opens ``conn.transaction()``."""
    size = max_size if max_size is not None else pg.pool_size + pg.max_overflow
    pool = ConnectionPool(
        dsn,
        min_size=min(min_size, size),
        max_size=size,
        name=name,
        open=False,
        kwargs={"autocommit": autocommit},
        configure=configure,
        check=ConnectionPool.check_connection,
    )
    try:
        pool.open(wait=True, timeout=30)
    except Exception as e:
        pool.close()
        raise PostgresUnavailable(dsn, str(e) or type(e).__name__) from e
    return pool


def connect(dsn: str, *, timeout: float = 10) -> psycopg.Connection[Any]:
    """One connection (not autocommit) to the projection database; ``PostgresUnavailable``
    if it cannot be reached within ``timeout`` seconds."""
    try:
        return psycopg.connect(dsn, autocommit=False, connect_timeout=max(1, round(timeout)))
    except psycopg.OperationalError as e:
        raise PostgresUnavailable(dsn, str(e)) from e


class PostgresOutage:
    """A projector's view of PostgreSQL going away and coming back, as a few log lines.

    ``failed`` for every failed attempt (the process's own retries, and through
    ``pool_filter`` the pool's "error connecting" warnings), ``answered`` after every
    statement that succeeded: one line when the outage starts, lines at growing intervals
    (``aosk._quiet.OutageLog``), one when it ends with its duration. Outages are counted
    in ``aosk_dependency_unavailable_total{dependency="postgres", role}``. Thread-safe:
    the pool reports from its own threads.
    """

    def __init__(self, dsn: str, *, role: str, pool_name: str, logger: logging.Logger,
                 backoff: Backoff | None = None, on_outage: Callable[[], None] | None = None) -> None:
        if on_outage is None:
            from aosk.metrics import METRICS

            on_outage = METRICS.outage_counter("postgres", role).inc
        self.outage = OutageLog(f"PostgreSQL {postgres_address(dsn)}", backoff=backoff, on_outage=on_outage)
        self.logger = logger
        self._lock = threading.Lock()
        self.pool_filter = OutageFilter(
            self.outage, lambda r: r.msg == "error connecting in %r: %s" and bool(r.args)
            and isinstance(r.args, tuple) and r.args[0] == pool_name, lock=self._lock)
        """Add to the ``psycopg.pool`` logger while the pool runs."""

    def failed(self, error: BaseException) -> None:
        with self._lock:
            line = self.outage.failure(time.time(), " ".join(str(error).split()) or type(error).__name__)
        if line is not None:
            self.logger.warning("%s", line)

    def answered(self) -> None:
        if not self.outage.down:
            return
        with self._lock:
            line = self.outage.success(time.time())
        if line is not None:
            self.logger.warning("%s", line)


def postgres_address(dsn: str) -> str:
    """``host:port`` of ``dsn`` (for messages; never the password)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


def record_stop(conn: psycopg.Connection[Any], schema: str, partition: int, *, offset: int | None = None,
                code: str | None = None, message: str | None = None) -> None:
    """Write why ``partition`` is not projected any further into ``projector_offsets``
    (``offset`` None: it goes on, the stop is cleared); read by ``aosk.status``."""
    conn.execute(
        sql.SQL("update {} set stopped_offset = %s, stop_reason = %s, stop_message = %s, "
                "stopped_at = case when %s::bigint is null then null else now() end "
                "where partition = %s").format(qualified(schema, "projector_offsets")),
        (offset, code, message, offset, partition),
    )


def ensure_offset_rows(conn: psycopg.Connection[Any], schema: str, partitions: int) -> None:
    """A ``projector_offsets`` row (at offset 0) for each of the journal's ``partitions``
    that has none yet; the compare-and-set of a batch updates an existing row."""
    conn.execute(
        sql.SQL(
            "insert into {} (partition, next_offset) select p, 0 from generate_series(0, %s) p on conflict do nothing"
        ).format(qualified(schema, "projector_offsets")),
        (partitions - 1,),
    )


async def open_async_pool(dsn: str, *, name: str = "aosk", min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool:
    """``open_pool`` for asyncio code, always in autocommit mode (each statement stands
    alone); opened, ready to use, connections checked before they are handed out."""
    pool = AsyncConnectionPool(dsn, min_size=min(min_size, max_size), max_size=max_size, name=name, open=False,
                               kwargs={"autocommit": True}, check=AsyncConnectionPool.check_connection)
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as e:
        await pool.close()
        raise PostgresUnavailable(dsn, str(e) or type(e).__name__) from e
    return pool
