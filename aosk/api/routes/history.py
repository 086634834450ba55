"""``/api/v1/agents/{id}/events`` (history by seq) and ``/api/v1/agents/{id}/state``
(now, or at a journal offset or broker time), read from the ``events`` projection."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from aosk.api.auth import owned, require
from aosk.api.consistency import READ_RESPONSES, consistent_read
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem, history_incomplete
from aosk.api.routes.agents import AgentId
from aosk.reads.events import EventItem

router = APIRouter(prefix="/api/v1/agents", tags=["history"])


class EventHistory(BaseModel):
    events: list[EventItem]
    has_more: bool
    next_cursor: int | None = None
    """Pass as ``after_seq`` for the next page."""


class StateOut(BaseModel):
    agent_id: str
    partition: int
    offset: int
    """The last journal offset included."""
    seq: int
    state_hash: str
    checkpoint_seq: int | None
    folded_records: int
    state: dict[str, Any]
    """The canonical state (the kernel's encode_state), as ``aosk state --format json`` prints it."""


@contextmanager
def projection(request: Request) -> Iterator[Any]:
    """A pooled connection for reading the projection; 503 while it does not exist yet."""
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA

    try:
        with request.app.state.pool.connection() as conn:
            yield conn
    except psycopg.errors.UndefinedTable as e:
        raise Problem(503, "projections-unavailable", "Projections unavailable",
                      f"the projection schema {DEFAULT_SCHEMA} has no events table yet (start `aosk project`)",
                      headers={"Retry-After": "5"}) from e


@router.get("/{agent_id}/events", response_model=EventHistory,
            summary="The agent's journal records (event, verdict), by seq, a page at a time",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def agent_events(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                 after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
                 limit: Annotated[int, Query(ge=1, le=500)] = 100) -> EventHistory:
    """Every record of the agent the projector has committed, including rejected ones and
    duplicates; page with ``after_seq=next_cursor`` until ``has_more`` is false."""
    from aosk.errors import HistoryIncomplete
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.events import history

    owned(request, caller, agent_id)
    with projection(request) as conn:
        try:
            page = history(conn, DEFAULT_SCHEMA, agent_id, after_seq=after_seq, limit=limit)
        except HistoryIncomplete as e:
            raise history_incomplete(e) from e
    return EventHistory(events=list(page.items), has_more=page.has_more,
                        next_cursor=page.next_cursor)


def _at_time_ms(text: str) -> int:
    from aosk.cli.state import parse_broker_time

    try:
        ms = parse_broker_time(text)
    except (ValueError, OverflowError) as e:
        raise Problem(422, "invalid-request", "Invalid request", f"at_time: {e}") from e
    if ms < 0 or ms > time.time() * 1000:
        raise Problem(422, "invalid-request", "Invalid request",
                      f"at_time: {text!r} is before 1970 or in the future; give a time up to now")
    return ms


@router.get("/{agent_id}/state", response_model=StateOut,
            summary="The agent's projected state, now or as of a journal offset or broker time",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def agent_state(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                at_offset: Annotated[int | None, Query(ge=0, le=2**62, description="after the record at this "
                                                       "offset of the agent's partition")] = None,
                at_time: Annotated[str | None, Query(max_length=64, description="after the agent's last record "
                                                     "with broker time <= this (ISO 8601 or epoch ms)")] = None,
                ) -> StateOut:
    """The nearest checkpoint at or before the point plus the agent's records after it,
    folded with the kernel's ``apply`` (``aosk state --at-offset`` does the same from Kafka)."""
    from aosk.errors import HistoryError, HistoryIncomplete, NoSuchAgent
    from aosk.kernel import encode_state
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.events import current_state, state_at

    if at_offset is not None and at_time is not None:
        raise Problem(422, "invalid-request", "Invalid request", "at_offset, at_time: give at most one of them")
    time_ms = _at_time_ms(at_time) if at_time is not None else None
    owned(request, caller, agent_id)
    param = "at_offset" if at_offset is not None else "at_time"
    with projection(request) as conn:
        try:
            if at_offset is None and time_ms is None:
                point = current_state(conn, DEFAULT_SCHEMA, agent_id)
                if point is None:
                    raise Problem(404, "state-not-found", "No state at that point",
                                  f"agent {agent_id} is not projected yet")
            else:
                point = state_at(conn, DEFAULT_SCHEMA, agent_id, offset=at_offset, time_ms=time_ms)
        except NoSuchAgent as e:
            raise Problem(404, "state-not-found", "No state at that point", f"{param}: {e}") from e
        except HistoryIncomplete as e:
            raise history_incomplete(e) from e
        except HistoryError as e:
            raise Problem(422, "point-out-of-range", "Point out of range", f"{param}: {e}") from e
    return StateOut(agent_id=agent_id, partition=point.partition, offset=point.offset, seq=point.seq,
                    state_hash=point.state_hash.hex(), checkpoint_seq=point.checkpoint_seq,
                    folded_records=point.folded, state=json.loads(encode_state(point.state)))
