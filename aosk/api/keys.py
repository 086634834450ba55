"""API keys: one secret per key, a tenant and a scope, stored hashed.

A key reads ``aosk_<id>_<secret>``: ``id`` (16 hex characters) is a non-secret lookup
prefix, the primary key of its row; ``secret`` is 256 random bits. The row keeps the
SHA-256 of the whole key, not the key: a fast hash is enough for a 256-bit random secret
(nothing to brute-force) and is checked on every request, where a slow password hash
would not be. The comparison is constant-time. A key is shown once, when created.

Scopes are ordered: ``read`` (GET routes of the tenant's agents), ``write`` (also the
routes that produce events), ``admin`` (also operator routes such as ``/api/v1/status``).

The table lives in the API's own schema (``api.schema_name``, default ``aosk_api``),
outside the projection schema that ``aosk replay`` swaps out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import AoskError

__all__ = ["SCOPES", "ApiKey", "KeyStore", "KeyCache", "parse_key", "ensure_schema"]

SCOPES: Final = ("read", "write", "admin")
"""In order: each scope allows what the ones before it allow."""

_KEY: Final = re.compile(r"^aosk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant_id: str
    scope: str
    name: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def parse_key(key: str) -> str | None:
    """The key's lookup id, or None if ``key`` is not shaped like an AOSK key."""
    m = _KEY.match(key)
    return m.group(1) if m else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def ensure_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the API's schema and tables if missing (idempotent, serialised by a lock)."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('aosk-api-schema'), hashtext(%s))", (schema,))
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(
            "create table if not exists {} ("
            " key_id text primary key,"
            " tenant_id text not null check (tenant_id <> ''),"
            " scope text not null check (scope in ('read', 'write', 'admin')),"
            " name text not null default '',"
            " secret_sha256 bytea not null,"
            " created_at timestamptz not null default now(),"
            " revoked_at timestamptz)").format(sql.Identifier(schema, "api_keys")))
        # The owner of every agent the API created, recorded before its spawn is produced:
        # ownership is checked here first, so another tenant's agent is a plain 404.
        conn.execute(sql.SQL(
            "create table if not exists {} ("
            " agent_id text primary key,"
            " tenant_id text not null,"
            " created_at timestamptz not null default now())").format(sql.Identifier(schema, "agents")))


class KeyStore:
    """Create, list, revoke and look up keys in ``schema`` over one connection."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self._conn = conn
        self._table = sql.Identifier(schema, "api_keys")

    def create(self, *, tenant_id: str, scope: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key: its row, and the key itself (shown once, never stored)."""
        if scope not in SCOPES:
            raise AoskError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        if not tenant_id.strip():
            raise AoskError("the tenant must not be empty")
        key_id = secrets.token_hex(8)
        key = f"aosk_{key_id}_{secrets.token_urlsafe(32)}"
        with self._conn.transaction():
            row = self._conn.execute(
                sql.SQL("insert into {} (key_id, tenant_id, scope, name, secret_sha256) values (%s, %s, %s, %s, %s) "
                        "returning created_at").format(self._table),
                (key_id, tenant_id, scope, name, _digest(key))).fetchone()
        assert row is not None  # returning always gives the row
        return ApiKey(key_id, tenant_id, scope, name, row[0]), key

    def list(self, *, tenant_id: str | None = None) -> list[ApiKey]:
        where = sql.SQL(" where tenant_id = %s") if tenant_id is not None else sql.SQL("")
        rows = self._conn.execute(
            sql.SQL("select key_id, tenant_id, scope, name, created_at, revoked_at from {}{} "
                    "order by created_at, key_id").format(self._table, where),
            (tenant_id,) if tenant_id is not None else None).fetchall()
        self._conn.commit()
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id``; False if there is no such key not yet revoked."""
        with self._conn.transaction():
            cur = self._conn.execute(
                sql.SQL("update {} set revoked_at = now() where key_id = %s and revoked_at is null").format(
                    self._table), (key_id,))
        return cur.rowcount == 1

    def authenticate(self, key: str) -> ApiKey | None:
        """The live key ``key`` is, or None (unknown, malformed, wrong secret or revoked)."""
        key_id = parse_key(key)
        if key_id is None:
            return None
        row = self._conn.execute(
            sql.SQL("select tenant_id, scope, name, secret_sha256, created_at from {} "
                    "where key_id = %s and revoked_at is null").format(self._table), (key_id,)).fetchone()
        self._conn.commit()
        if row is None or not hmac.compare_digest(bytes(row[3]), _digest(key)):
            return None
        return ApiKey(key_id, row[0], row[1], row[2], row[4])


class KeyCache:
    """Authenticated keys remembered for ``ttl_s`` seconds (1 s: a revocation takes
    effect within it on every API process, without a notification channel)."""

    def __init__(self, lookup: Any, *, ttl_s: float = 1.0, clock: Any = time.monotonic, size: int = 10_000) -> None:
        self._lookup = lookup
        self._ttl = ttl_s
        self._clock = clock
        self._size = size
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}

    def cached(self, key: str) -> tuple[bool, ApiKey | None]:
        """(True, the answer) if ``key``'s answer is remembered and fresh, else (False, None):
        no lookup (an async caller sends a miss to ``get`` off its event loop)."""
        hit = self._entries.get(_digest(key))
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return True, hit[1]
        return False, None

    def get(self, key: str) -> ApiKey | None:
        digest = _digest(key)  # the cache never holds a key itself
        now = self._clock()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        found = self._lookup(key)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[digest] = (now, found)
        return found
