"""``GET /api/v1/agents/{id}/stream``: Server-Sent Events, one message per journal record
of the agent, read from the ``events`` projection (so each carries its verdict).

``id:`` is the record's journal offset (an agent's records are all on one partition),
``event:`` its type (``undecodable`` when it has none), ``data:`` the same JSON item as
the history route. ``Last-Event-ID`` (or ``?last_event_id=``) resumes strictly after
that offset, on any API process, at any age: the rows are read by offset from
PostgreSQL, nothing is kept per process. Without it the stream starts at the agent's
first record. A stream that would need records the ``events`` projection lacks (a
schema projected before events were stored) is refused before it starts (503
``history-incomplete``), never started late.

Resources per client: no connection is held while a stream waits. Each read borrows a
pooled connection for one query (at most ``_BATCH`` rows) and gives it back; waiting is
on the process's one ``LISTEN`` connection (``aosk.api.wakeups``), with a poll every
``_POLL`` seconds as a fallback, and a comment line every ``_KEEPALIVE`` seconds. A
client that does not read gets what the socket buffers (uvicorn pauses at 64 KiB) and,
when one write has waited ``_SLOW_CLIENT`` seconds, is disconnected; it resumes with the
last id it got. A client that closes the connection stops its loop at once (Starlette
cancels the response when the disconnect arrives).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter
from starlette.types import Send

from aosk.api.auth import owned, require
from aosk.api.keys import ApiKey
from aosk.api.metrics import sse_client
from aosk.api.problems import Problem, history_incomplete
from aosk.api.routes.agents import AgentId
from aosk.api.routes.history import projection
from aosk.reads.events import EventItem

router = APIRouter(prefix="/api/v1/agents", tags=["stream"])
_ITEM_JSON: Final = TypeAdapter(EventItem)
"""An item of ``GET .../events`` as JSON (one SSE ``data:`` line)."""

log = logging.getLogger("aosk.api")

_BATCH: Final = 200
_POLL: Final = 1.0
_KEEPALIVE: Final = 15.0
_SLOW_CLIENT: Final = 10.0


class EventStream(StreamingResponse):
    """``text/event-stream`` whose writes are bounded in time: a client that does not read
    for ``_SLOW_CLIENT`` seconds is disconnected (the response ends without completing)."""

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = self.body_iterator
        try:
            async for chunk in body:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                try:
                    await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": True}),
                                           _SLOW_CLIENT)
                except TimeoutError:
                    log.info("stream client too slow (a write waited %.0f s): disconnected", _SLOW_CLIENT)
                    return
        finally:
            closer = getattr(body, "aclose", None)
            if closer is not None:
                await closer()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def sse_message(item: Any) -> str:
    """One SSE message: ``id`` the journal offset, ``event`` the type, ``data`` the JSON item."""
    data = _ITEM_JSON.dump_json(item).decode()
    return f"id: {item.offset}\nevent: {item.type or 'undecodable'}\ndata: {data}\n\n"


def _resume_point(header: str | None, query: int | None) -> int:
    if header is None or not header.strip():
        return -1 if query is None else query
    try:
        value = int(header.strip())
    except ValueError:
        value = -2
    if value < -1:
        raise Problem(422, "invalid-request", "Invalid request",
                      f"Last-Event-ID: {header[:40]!r} is not a journal offset (an integer >= -1)")
    return value


def _require_events(request: Request, agent_id: str, after: int) -> None:
    """Refuse the stream (503 ``history-incomplete``) if records after ``after`` lack rows."""
    from aosk.errors import HistoryIncomplete
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.coverage import require_events

    with projection(request) as conn:
        try:
            require_events(conn, DEFAULT_SCHEMA, agent_id, after_offset=after, what=f"the stream of {agent_id!r}")
        except HistoryIncomplete as e:
            raise history_incomplete(e) from e


async def _messages(request: Request, agent_id: str, after: int) -> AsyncIterator[str]:
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.events import events_after

    pool = request.app.state.pool
    wakeups = request.app.state.wakeups

    def fetch(offset: int) -> list[Any]:
        with pool.connection() as conn:  # checked from ``after`` on by agent_stream
            return events_after(conn, DEFAULT_SCHEMA, agent_id, after_offset=offset, limit=_BATCH, checked=True)

    with sse_client(request):  # counted while connected; a closed client cancels the generator
        last = after
        sent_at = time.monotonic()
        yield "retry: 1000\n\n"
        while True:
            ticket = wakeups.ticket()
            try:
                items = await run_in_threadpool(fetch, last)
            except Exception as e:  # noqa: BLE001 - PostgreSQL away: the client resumes from its last id
                log.warning("stream of %s ends: %s", agent_id, " ".join(str(e).split()) or type(e).__name__)
                return
            if items:
                yield "".join(sse_message(i) for i in items)
                last = items[-1].offset
                sent_at = time.monotonic()
                if len(items) == _BATCH:
                    continue
            idle = time.monotonic() - sent_at
            if idle >= _KEEPALIVE:
                yield ": keep-alive\n\n"
                sent_at = time.monotonic()
                idle = 0.0
            try:
                await asyncio.wait_for(ticket.wait(), timeout=min(_POLL, _KEEPALIVE - idle))
            except TimeoutError:
                pass


@router.get("/{agent_id}/stream", response_class=EventStream,
            summary="Server-Sent Events: every journal record of the agent with its verdict, resumable",
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`id:` journal offset, `event:` type, `data:` the history item"}})
async def agent_stream(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                       last_event_id: Annotated[int | None, Query(ge=-1, le=2**62, description=(
                           "resume after this journal offset (when the Last-Event-ID header cannot be set)"))] = None,
                       last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID",
                                                                          max_length=64)] = None) -> EventStream:
    after = _resume_point(last_event_id_header, last_event_id)
    await run_in_threadpool(owned, request, caller, agent_id)
    await run_in_threadpool(_require_events, request, agent_id, after)
    return EventStream(_messages(request, agent_id, after),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
