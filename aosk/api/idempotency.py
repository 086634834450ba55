"""Idempotent writes: ``Idempotency-Key`` recorded in PostgreSQL before producing.

A write route takes ``idem: Annotated[Idempotency, Depends(idempotency)]`` and wraps
its produce step, an async function ``produce(event_id, new_id) -> Response``, in one
line: ``return await idem.run(produce)``. With
no header, ``run`` just produces. With one, per tenant:

1. ``INSERT ... ON CONFLICT DO NOTHING`` a *pending* row with the SHA-256 of the
   canonical request (method, route template, path and query parameters, body as
   canonical JSON), a lease, and the ids the write will use: the event id and, for
   routes that allocate one (``POST /api/v1/agents``), the new resource's id.
2. If the row was there already: another request hash -> 422 ``idempotency-key-reused``;
   *done* -> the stored response again (status, body, the headers that matter, plus
   ``Idempotent-Replayed: true``); *pending* with a live lease -> 409
   ``idempotency-in-progress`` with ``Retry-After``; *pending* with an expired lease
   (whoever held it crashed between insert and produce, or got a 5xx) -> taken over by
   compare-and-set and produced again with the SAME event id, so the kernel judges a
   second record as a duplicate of the first.
3. After producing, the response is stored and the row is *done*. A 4xx raised after
   producing (e.g. a rejection with ``?wait=verdict``) is a result and is stored too; a
   5xx is not: the lease is ended so the next retry takes over, with the same event id.

Rows are kept ``api.idempotency_ttl_s`` (24 h); each process deletes expired rows at
most once a minute, in passing. The table lives in the API's schema (``api.schema_name``),
outside the projection schema ``aosk replay`` swaps.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import psycopg
from fastapi import Depends, Header, Request
from fastapi.responses import Response
from psycopg import sql

from aosk.api.auth import require
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem, problem_response

__all__ = ["IDEMPOTENCY_HEADER", "REPLAYED_HEADER", "request_hash", "ensure_schema", "IdempotencyStore",
           "Idempotency", "idempotency"]

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
_KEPT_HEADERS: Final = ("content-type", "aosk-consistency-token", "location")
"""The response headers stored and replayed (the rest are per-connection)."""
_SWEEP_EVERY_S: Final = 60.0


def request_hash(method: str, route: str, path_params: Mapping[str, Any], query: list[tuple[str, str]],
                 body: bytes) -> bytes:
    """SHA-256 of the canonical request: a body that is JSON counts by its meaning (key
    order and spacing do not matter), any other body by its bytes."""
    try:
        canonical_body: Any = ["json", json.loads(body)] if body else ["empty"]
    except (ValueError, UnicodeDecodeError):
        canonical_body = ["bytes", body.hex()]
    doc = [method.upper(), route, sorted((str(k), str(v)) for k, v in path_params.items()), sorted(query),
           canonical_body]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).digest()


def ensure_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the idempotency table in the API's ``schema`` if missing (idempotent)."""
    table = sql.Identifier(schema, "idempotency_keys")
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('aosk-api-idempotency'), hashtext(%s))", (schema,))
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(
            "create table if not exists {} ("
            " tenant_id text not null,"
            " key text not null,"
            " request_sha256 bytea not null,"
            " state text not null check (state in ('pending', 'done')),"
            " attempt int not null default 1,"
            " lease_until timestamptz,"
            " event_id text not null,"
            " resource_id text not null,"
            " response_status int,"
            " response_body json,"
            " response_headers jsonb,"
            " created_at timestamptz not null default now(),"
            " expires_at timestamptz not null,"
            " primary key (tenant_id, key))").format(table))
        conn.execute(sql.SQL("create index if not exists {} on {} (expires_at)").format(
            sql.Identifier("idempotency_keys_expires_at"), table))


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request holds the key: produce with these ids."""

    event_id: str
    resource_id: str


class IdempotencyStore:
    """The ``idempotency_keys`` table of ``schema``, through ``pool`` (a psycopg
    ``AsyncConnectionPool`` in autocommit mode: every statement here stands alone, and
    the hot path of a write never leaves the event loop)."""

    def __init__(self, pool: Any, schema: str, *, ttl_s: float, lease_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool, self._ttl, self._lease, self._clock = pool, ttl_s, lease_s, clock
        self._table = sql.Identifier(schema, "idempotency_keys")
        self._next_sweep = 0.0

    async def claim(self, tenant_id: str, key: str, digest: bytes, event_id: str,
                    resource_id: str) -> Claimed | Response:
        """Hold ``key`` (a ``Claimed``) or answer for it: the stored ``Response``, or raise
        the 409 / 422 problem."""
        await self._sweep()
        t = self._table
        async with self._pool.connection() as conn:
            for _ in range(3):
                row = await (await conn.execute(sql.SQL(
                    "insert into {} (tenant_id, key, request_sha256, state, lease_until, event_id, resource_id, "
                    "expires_at) values (%s, %s, %s, 'pending', now() + make_interval(secs => %s), %s, %s, "
                    "now() + make_interval(secs => %s)) on conflict (tenant_id, key) do nothing "
                    "returning event_id, resource_id").format(t),
                    (tenant_id, key, digest, self._lease, event_id, resource_id, self._ttl))).fetchone()
                if row is not None:
                    return Claimed(row[0], row[1])
                row = await (await conn.execute(sql.SQL(
                    "select request_sha256, state, attempt, lease_until > now(), event_id, resource_id, "
                    "response_status, response_body::text, response_headers, expires_at <= now(), "
                    "greatest(1, ceil(extract(epoch from lease_until - now())))::int "
                    "from {} where tenant_id = %s and key = %s").format(t), (tenant_id, key))).fetchone()
                if row is None:
                    continue  # deleted between the two statements: insert again
                sha, state, attempt, live, ev, res, status, body, headers, expired, retry_s = row
                if expired:
                    await conn.execute(sql.SQL(
                        "delete from {} where tenant_id = %s and key = %s and expires_at <= now()").format(t),
                        (tenant_id, key))
                    continue
                if bytes(sha) != digest:
                    raise Problem(422, "idempotency-key-reused", "Idempotency key reused",
                                  f"header {IDEMPOTENCY_HEADER}: this key was used for a different request "
                                  "(another route, path or body); use a new key for a new request")
                if state == "done":
                    return _replay(status, body, headers)
                if live:
                    raise Problem(409, "idempotency-in-progress", "Idempotency key in progress",
                                  f"header {IDEMPOTENCY_HEADER}: the first request with this key is still being "
                                  f"processed; retry after {retry_s} s", headers={"Retry-After": str(retry_s)})
                took = await conn.execute(sql.SQL(
                    "update {} set attempt = attempt + 1, lease_until = now() + make_interval(secs => %s) "
                    "where tenant_id = %s and key = %s and state = 'pending' and attempt = %s "
                    "and lease_until <= now()").format(t), (self._lease, tenant_id, key, attempt))
                if took.rowcount == 1:
                    return Claimed(ev, res)  # the same ids: a second produce is a duplicate
        raise Problem(409, "idempotency-in-progress", "Idempotency key in progress",
                      f"header {IDEMPOTENCY_HEADER}: other requests with this key keep racing this one; retry",
                      headers={"Retry-After": "1"})

    async def finish(self, tenant_id: str, key: str, response: Response) -> Response:
        """Store ``response`` as the key's answer; the answer stored first if another
        holder of the key finished before this one (every retry sees one answer)."""
        headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
        body = bytes(response.body).decode()
        async with self._pool.connection() as conn:
            done = await conn.execute(sql.SQL(
                "update {} set state = 'done', lease_until = null, response_status = %s, response_body = %s::json, "
                "response_headers = %s::jsonb where tenant_id = %s and key = %s and state = 'pending'").format(
                self._table), (response.status_code, body, json.dumps(headers), tenant_id, key))
            if done.rowcount == 1:
                return response
            row = await (await conn.execute(sql.SQL(
                "select response_status, response_body::text, response_headers from {} "
                "where tenant_id = %s and key = %s and state = 'done'").format(self._table),
                (tenant_id, key))).fetchone()
        return _replay(*row) if row is not None else response

    async def release(self, tenant_id: str, key: str) -> None:
        """End the lease of a pending key (a 5xx): the next retry takes it over."""
        async with self._pool.connection() as conn:
            await conn.execute(sql.SQL("update {} set lease_until = now() where tenant_id = %s and key = %s "
                                 "and state = 'pending'").format(self._table), (tenant_id, key))

    async def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        async with self._pool.connection() as conn:
            await conn.execute(sql.SQL("delete from {t} where ctid = any(array(select ctid from {t} "
                                 "where expires_at <= now() limit 1000))").format(t=self._table))


def _replay(status: int, body: str, headers: dict[str, str]) -> Response:
    return Response(body.encode(), status_code=status, headers={**headers, REPLAYED_HEADER: "true"})


@dataclass(frozen=True, slots=True)
class Idempotency:
    """One write request's idempotency: ``run(produce)`` produces at most once per key."""

    request: Request
    tenant_id: str
    key: str | None
    digest: bytes

    async def run(self, produce: Callable[[str, str], Awaitable[Response]], *,
                  event_id: str | None = None) -> Response:
        """``produce(event_id, new_id)`` once for this key, or the stored answer. ``new_id``
        is the id of a resource the write creates (an agent), stable across retries."""
        fresh_event, fresh_id = event_id or str(uuid.uuid4()), str(uuid.uuid4())
        if self.key is None:
            return await produce(fresh_event, fresh_id)
        store: IdempotencyStore = self.request.app.state.idempotency
        tenant_id = self.tenant_id
        claim = await store.claim(tenant_id, self.key, self.digest, fresh_event, fresh_id)
        if isinstance(claim, Response):
            return claim
        try:
            response = await produce(claim.event_id, claim.resource_id)
        except Problem as e:
            if e.status >= 500:
                await store.release(tenant_id, self.key)
                raise
            response = problem_response(self.request, e)
        except BaseException:
            await store.release(tenant_id, self.key)
            raise
        return await store.finish(tenant_id, self.key, response)


_KeyHeader = Annotated[str | None, Header(
        alias=IDEMPOTENCY_HEADER, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="any unique string (e.g. a UUID) per logical write: a retry with the same key and request "
                    "gets the first response; kept 24 h")]


async def idempotency(request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                      key: _KeyHeader = None) -> Idempotency:
    """The dependency of every write route (authenticates with write scope; hashes the
    request only when a key is sent)."""
    if key is None:
        return Idempotency(request, caller.tenant_id, None, b"")
    route = request.scope.get("route")
    digest = request_hash(request.method, getattr(route, "path", request.url.path), request.path_params,
                          list(request.query_params.multi_items()), await request.body())
    return Idempotency(request, caller.tenant_id, key, digest)
