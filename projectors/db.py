"""Connections and versioned migrations of the projection database.

Every projection table, view and the ``projector_offsets`` table live in ONE schema
(default ``aosk``), never in ``public``: ``aosk replay`` builds a shadow schema and
swaps it in by renaming, so everything that must move together has to be inside it.
Migrations are plain SQL files ``NNNN_name.sql`` applied in order with
``search_path`` set to the target schema, recorded in ``<schema>.schema_migrations``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from aosk.config import PostgresSettings
from aosk.errors import AoskError

DEFAULT_SCHEMA = "aosk"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(AoskError):
    """A migration failed, or the database was migrated by a newer AOSK."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


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


def migrate(conn: psycopg.Connection, *, schema: str = DEFAULT_SCHEMA, dimension: int = 384) -> list[str]:
    """Apply pending migrations to ``schema`` (created if missing), one transaction
    each; returns the names applied. Safe to run concurrently from several processes:
    an advisory lock serialises them."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('aosk-migrate'), hashtext(%s))", (schema,))
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        conn.execute("create extension if not exists vector")
        conn.execute(
            sql.SQL(
                "create table if not exists {}.schema_migrations (version int primary key, name text not null,"
                " checksum text not null)"
            ).format(sql.Identifier(schema))
        )
        done = {
            row[0]: row[2]
            for row in conn.execute(
                sql.SQL("select version, name, checksum from {}.schema_migrations").format(sql.Identifier(schema))
            )
        }
        known = {m.version for m in migrations()}
        newer = sorted(v for v in done if v not in known)
        if newer:
            raise MigrationError(
                f"schema {schema} has migrations {newer} this AOSK does not know; upgrade AOSK"
            )
        for m in migrations():
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was changed after it was applied to {schema}; "
                        "ship changes as a new migration"
                    )
                continue
            conn.execute(sql.SQL("set local search_path to {}, public").format(sql.Identifier(schema)))
            conn.execute(m.sql.replace("{dimension}", str(int(dimension))).encode())
            conn.execute(
                sql.SQL("insert into {}.schema_migrations values (%s, %s, %s)").format(sql.Identifier(schema)),
                (m.version, m.name, m.checksum),
            )
            applied.append(f"{m.version:04d}_{m.name}")
    return applied


def open_pool(dsn: str, pg: PostgresSettings, *, name: str = "aosk") -> ConnectionPool:
    """A psycopg pool sized by ``pool_size`` + ``max_overflow``; opened, ready to use."""
    pool = ConnectionPool(
        dsn, min_size=1, max_size=pg.pool_size + pg.max_overflow, name=name, open=False,
        kwargs={"autocommit": False},
    )
    pool.open(wait=True, timeout=30)
    return pool
