"""Read-your-writes: journal positions on writes, projected positions on reads.

Every write answers ``AOSK-Consistency-Token: <partition>:<offset>``, the journal
position of the record it wrote. A read sending that token back in a request header of
the same name waits (at most ``api.consistency_wait_s``) until the projection holds that
record, else 504 ``not-yet-projected``. A token may name several partitions,
``p:o,p:o`` (e.g. the tokens of writes to several agents joined with commas); for each,
the read waits until that partition's projected ``next_offset`` is past ``o``.

Every read answers ``AOSK-Projected-Offset: <partition>:<next offset>`` (every partition,
comma-separated, for list routes): the records below it were projected before the read
began, so what the read returned reflects at least them. Note the off-by-one: a token
names a record, the projected offset names the first record not yet projected.

``consistent_read`` is the one dependency: a GET route adds
``dependencies=[Depends(consistent_read)]`` (it authenticates with read scope first,
so a caller without a key never waits).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from fastapi import Depends, Header, Request, Response

from aosk.api.auth import require
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem

__all__ = ["TOKEN_HEADER", "PROJECTED_HEADER", "WRITE_RESPONSES", "READ_RESPONSES", "parse_token",
           "format_positions", "consistent_read", "write_token"]

TOKEN_HEADER: Final = "AOSK-Consistency-Token"
PROJECTED_HEADER: Final = "AOSK-Projected-Offset"
_PAIR: Final = re.compile(r"^\s*(\d{1,9}):(\d{1,19})\s*$")
_MAX_PAIRS: Final = 1024


WRITE_RESPONSES: Final[dict[int | str, dict[str, object]]] = {202: {"headers": {TOKEN_HEADER: {
    "description": "`<partition>:<offset>` of the record written: send it back on a read to read this write",
    "schema": {"type": "string"}}}}}
"""OpenAPI ``responses=`` of a write route (the header it answers with)."""
READ_RESPONSES: Final[dict[int | str, dict[str, object]]] = {200: {"headers": {PROJECTED_HEADER: {
    "description": "`<partition>:<next offset>[,...]`: records below it were projected before this read",
    "schema": {"type": "string"}}}}}
"""OpenAPI ``responses=`` of a read route with ``consistent_read``."""


def parse_token(token: str) -> dict[int, int]:
    """``"p:o,p:o"`` -> ``{p: o}`` (the highest offset per partition); ``ValueError`` naming
    what is wrong."""
    positions: dict[int, int] = {}
    parts = token.split(",")
    if len(parts) > _MAX_PAIRS:
        raise ValueError(f"at most {_MAX_PAIRS} partition:offset pairs")
    for part in parts:
        m = _PAIR.match(part)
        if m is None:
            raise ValueError(f"{part.strip()[:40]!r} is not <partition>:<offset>")
        p, o = int(m.group(1)), int(m.group(2))
        if o >= 2**63:
            raise ValueError(f"offset {o} is out of range")
        positions[p] = max(o, positions.get(p, -1))
    return positions


def format_positions(positions: dict[int, int]) -> str:
    """``{p: o}`` -> ``"p:o,p:o"`` in partition order."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


def write_token(partition: int, offset: int) -> dict[str, str]:
    """The header a write answers with: its record's journal position."""
    return {TOKEN_HEADER: f"{partition}:{offset}"}


def _projected(request: Request, partitions: list[int] | None) -> dict[int, int]:
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.status import projected_offsets

    try:
        with request.app.state.pool.connection() as conn:
            have = projected_offsets(conn, DEFAULT_SCHEMA)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        have = {}  # no projection yet: nothing is projected
    return {p: have.get(p, 0) for p in partitions} if partitions is not None else have


def consistent_read(request: Request, response: Response,
                    caller: Annotated[ApiKey, Depends(require("read"))],
                    token: Annotated[str | None, Header(
                        alias=TOKEN_HEADER, max_length=16_384,
                        description="a write's AOSK-Consistency-Token: wait until it is projected")] = None) -> None:
    """Wait for ``AOSK-Consistency-Token`` (if sent) and answer ``AOSK-Projected-Offset``."""
    from aosk.errors import ProjectionTimeout
    from aosk.projectors.db import DEFAULT_SCHEMA

    settings = request.app.state.settings
    if token is not None:
        try:
            wanted = parse_token(token)
        except ValueError as e:
            raise Problem(422, "invalid-consistency-token", "Invalid consistency token",
                          f"header {TOKEN_HEADER}: {e}") from e
        if any(p >= settings.kafka.journal_partitions for p in wanted):
            raise Problem(422, "invalid-consistency-token", "Invalid consistency token",
                          f"header {TOKEN_HEADER}: the journal has {settings.kafka.journal_partitions} partitions")
        if any(_projected(request, list(wanted)).get(p, 0) <= o for p, o in wanted.items()):
            from aosk.client.projections import wait_until_projected

            try:
                wait_until_projected(request.app.state.endpoints.dsn, DEFAULT_SCHEMA, wanted,
                                     timeout=settings.api.consistency_wait_s)
            except ProjectionTimeout as e:
                raise Problem(504, "not-yet-projected", "Not yet projected",
                              f"header {TOKEN_HEADER}: {e}", headers={"Retry-After": "1"}) from e
    agent_id = request.path_params.get("agent_id")
    partitions: list[int] | None = None
    if isinstance(agent_id, str):
        from aosk.partitioning import partition_for

        partitions = [partition_for(agent_id, settings.kafka.journal_partitions)]
    response.headers[PROJECTED_HEADER] = format_positions(_projected(request, partitions))

