"""Reads of the ``events`` projection: an agent's history by seq, its records after a
journal offset (the SSE stream), and its state now or at any offset or broker time.

Point-in-time states are the nearest checkpoint at or before the point plus the agent's
``events`` rows after it, folded with the kernel's ``apply`` -- what
``aosk.projectors.history.state_at`` does from Kafka, here without a consumer. The
partition's accepted markers (rows of its pseudo-agent) switch the fold version and
partition count as they do live. Only what the projector has committed is read: a point
past the partition's projected end is refused (``ProjectionBehind``), not waited for;
``ProjectionReader.state_at`` then reads the journal.

A schema projected before migration 0005 lacks the ``events`` rows of its early records
(``aosk.reads.coverage``): every read here that would need one of them refuses with
``HistoryIncomplete`` instead of answering from part of the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

from aosk.errors import (
    EventsRowUnfoldable,
    HistoryError,
    HistoryIncomplete,
    NoSuchAgent,
    ProjectionBehind,
    StateDecodeError,
)
from aosk.kernel import AgentSlot, AgentState, Record, apply, decode_state, pseudo_key, state_hash
from aosk.projectors.checkpoints import Checkpoint, checkpoint_of_row, nearest_checkpoint, nearest_query
from aosk.projectors.db import qualified
from aosk.projectors.event_rows import payload_of, record_of
from aosk.projectors.history import fold_start, needs_recorded_partitions, recorded_partitions_of
from aosk.projectors.rows import ms_of, storage_key, ts
from aosk.reads.coverage import complete_from, require_events

__all__ = ["EventItem", "EventPage", "PointState", "history", "events_after", "partition_of", "projected_end",
           "current_state", "state_at", "fold_events"]

_ITEM: Final = sql.SQL("seq, journal_partition, journal_offset, event_id, event_type, payload, verdict, reason, "
                       "broker_time")


@dataclass(frozen=True)
class EventItem:
    """One journal record of an agent, as the ``events`` projection holds it."""

    seq: int
    partition: int
    offset: int
    event_id: str | None
    type: str | None
    """None: the record did not decode (``payload`` then says why)."""
    payload: dict[str, Any]
    verdict: str
    reason: str
    broker_time: datetime


@dataclass(frozen=True)
class EventPage:
    items: list[EventItem]
    has_more: bool
    next_cursor: int | None
    """The seq to pass as ``after_seq`` for the next page (None: no more)."""


@dataclass(frozen=True)
class PointState:
    agent_id: str
    partition: int
    offset: int
    """The last journal offset of the partition included (now: the agent's last record's)."""
    seq: int
    state: AgentState
    state_hash: bytes
    checkpoint_seq: int | None
    """Seq of the checkpoint the fold started from (None: from the beginning, or the
    current projected state)."""
    folded: int


def _item(row: tuple[Any, ...]) -> EventItem:
    return EventItem(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5], row[6], row[7], row[8])


def history(conn: psycopg.Connection[Any], schema: str, agent_id: str, *, after_seq: int = 0,
            limit: int = 100) -> EventPage:
    """``agent_id``'s records with seq > ``after_seq``, by seq, at most ``limit``.
    ``HistoryIncomplete``: some of them have no ``events`` row."""
    require_events(conn, schema, agent_id, after_seq=after_seq, what=f"the history of {agent_id!r}")
    rows = conn.execute(
        sql.SQL("select {} from {} where agent_id = %s and seq > %s order by seq limit %s").format(
            _ITEM, qualified(schema, "events")),
        (storage_key(agent_id), after_seq, limit + 1),
    ).fetchall()
    items = [_item(r) for r in rows[:limit]]
    more = len(rows) > limit
    return EventPage(items, more, items[-1].seq if more else None)


def events_after(conn: psycopg.Connection[Any], schema: str, agent_id: str, *, after_offset: int,
                 limit: int = 500, checked: bool = False) -> list[EventItem]:
    """``agent_id``'s records after journal offset ``after_offset`` (-1: all), by offset.
    ``HistoryIncomplete``: some of them have no ``events`` row. ``checked``: the caller
    already made that check for this ``after_offset`` or a lower one (a stream polling
    on: rows below ``complete_from`` never appear later, so once is enough)."""
    if not checked:
        require_events(conn, schema, agent_id, after_offset=after_offset, what=f"the records of {agent_id!r}")
    rows = conn.execute(
        sql.SQL("select {} from {} where agent_id = %s and journal_offset > %s order by journal_offset "
                "limit %s").format(_ITEM, qualified(schema, "events")),
        (storage_key(agent_id), after_offset, limit),
    ).fetchall()
    return [_item(r) for r in rows]


def partition_of(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> int | None:
    """The journal partition of ``agent_id``'s records (None: none projected)."""
    row = conn.execute(
        sql.SQL("select journal_partition from {} where agent_id = %s limit 1").format(qualified(schema, "events")),
        (storage_key(agent_id),),
    ).fetchone()
    return None if row is None else int(row[0])


def projected_end(conn: psycopg.Connection[Any], schema: str, partition: int) -> int:
    """The next offset of ``partition`` the projection has not committed yet."""
    row = conn.execute(
        sql.SQL("select next_offset from {} where partition = %s").format(qualified(schema, "projector_offsets")),
        (partition,),
    ).fetchone()
    return 0 if row is None else int(row[0])


def current_state(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> PointState | None:
    """``agent_id``'s projected state now (None: not projected)."""
    row = conn.execute(
        sql.SQL("select journal_partition, last_offset, state from {} where agent_id = %s").format(
            qualified(schema, "agent_state")),
        (storage_key(agent_id),),
    ).fetchone()
    if row is None:
        return None
    try:
        st = decode_state(bytes(row[2]))
    except StateDecodeError as e:
        raise HistoryError(f"the projected state of {agent_id!r} does not decode: {e}") from e
    return PointState(agent_id, int(row[0]), int(row[1]), st.seq, st, state_hash(st), None, 0)


def _first_offset(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> int | None:
    row = conn.execute(
        sql.SQL("select journal_offset from {} where agent_id = %s order by seq limit 1").format(
            qualified(schema, "events")),
        (storage_key(agent_id),),
    ).fetchone()
    return None if row is None else int(row[0])


def _not_yet(conn: psycopg.Connection[Any], schema: str, agent_id: str, point: str, partition: int) -> NoSuchAgent:
    first = _first_offset(conn, schema, agent_id)
    if first is None:
        return NoSuchAgent(agent_id, f"no such agent: {agent_id!r} has no projected record")
    return NoSuchAgent(agent_id, f"agent {agent_id!r} did not exist yet at {point}: its first record is at "
                                 f"offset {first} of partition {partition}; ask for a point at or after it",
                       first_offset=first)


def _record(key: str | None, partition: int, offset: int, event_type: str | None, payload: str,
            broker_ms: int) -> Record:
    try:
        return record_of(key, partition, offset, event_type, payload_of(payload), broker_ms, escaped=False)
    except (TypeError, ValueError, KeyError) as e:  # a row written without its payload (refused)
        raise EventsRowUnfoldable(f"the events row of {partition}:{offset} cannot be folded back ({e}); "
                                  "`aosk state --at-offset` reads the journal instead") from e


def _placed_query(schema: str, agent_id: str) -> tuple[sql.Composed, tuple[Any, ...]]:
    """(partition, next offset, broker time of the last record, ``complete_from``, the
    stored state of the partition's pseudo-agent) of ``agent_id``'s partition as the
    projection committed it, in one query (no row: no record of the agent projected).
    The pseudo-agent's state holds the partition count its version 2 marker recorded
    (``recorded_partitions_of``), which a fold from a checkpoint needs when the rules at
    the checkpoint route by partition. Meant for binary results (the state's bytes as
    they are)."""
    q = sql.SQL("select e.journal_partition, coalesce(o.next_offset, 0), o.last_record_at, "
                "coalesce(c.complete_from, 0), s.state "
                "from (select journal_partition from {} where agent_id = %s limit 1) e "
                "left join {} o on o.partition = e.journal_partition "
                "left join {} c on c.partition = e.journal_partition "
                "left join {} s on s.agent_id = '~p' || e.journal_partition").format(
        qualified(schema, "events"), qualified(schema, "projector_offsets"), qualified(schema, "events_coverage"),
        qualified(schema, "agent_state"))
    return q, (storage_key(agent_id),)


@dataclass(frozen=True)
class _Placed:
    partition: int
    end: int
    """The partition's next offset not projected yet."""
    last_at: datetime | None
    complete: int
    """``complete_from`` of the partition."""
    pseudo: bytes | None
    """The stored state of the partition's pseudo-agent (None: none)."""


def _placed(row: tuple[Any, ...] | None) -> _Placed | None:
    if row is None:
        return None
    return _Placed(int(row[0]), int(row[1]), row[2], int(row[3]), None if row[4] is None else bytes(row[4]))


def _rows_query(schema: str, partition: int, key: str, start: int, stop: int) -> tuple[sql.Composed, tuple[Any, ...]]:
    """The query of the rows a fold of ``key`` over offsets [start, stop] of ``partition``
    reads: the agent's own and its partition's accepted markers (rows of the
    pseudo-agent), by offset (``_fold_rows`` keeps those of ``partition``). Two scans of
    ``events_agent_offset``, so the agent's rows are found without reading the other
    agents' rows of the partition in between. The partition is checked in
    ``_fold_rows``, not in SQL: given it, the planner ANDs the primary key's offset range
    with every row of the agent (``events_agent_seq``) instead, ten times slower for a
    long-lived agent. (Only fold version 1 leaves an agent rows on another partition:
    records produced there under its key.) Meant for binary results: no text
    conversion of the offsets and times, the payload as its JSON text."""
    events = qualified(schema, "events")
    q = sql.SQL("(select agent_id, journal_partition, journal_offset, event_type, payload::text, broker_time "
                "from {e} where agent_id = %s and journal_offset >= %s and journal_offset <= %s) "
                "union all "
                "(select agent_id, journal_partition, journal_offset, event_type, payload::text, broker_time "
                "from {e} where agent_id = %s and journal_offset >= %s and journal_offset <= %s "
                "and verdict = 'accepted') "
                "order by journal_offset").format(e=events)
    return q, (key, start, stop, storage_key(pseudo_key(partition)), start, stop)


def _fold_rows(rows: list[tuple[Any, ...]], partition: int) -> list[tuple[Any, ...]]:
    """``_rows_query``'s rows of ``partition``, as (owner, offset, event type, payload,
    broker time)."""
    return [(r[0], r[2], r[3], r[4], r[5]) for r in rows if r[1] == partition]


def _ahead_query(schema: str, agent_id: str, offset: int) -> tuple[sql.Composed, dict[str, Any]]:
    """``_rows_query`` for a fold of ``agent_id`` up to ``offset`` before its partition
    and its nearest checkpoint are known, so that they go in the same round trip as the
    queries that find them (``state_at``): the partition is the one ``_placed_query``
    picks, the rows start after the nearest checkpoint at or before ``offset`` (as
    ``nearest_query`` picks it; all rows when there is none). The first row (``agent_id``
    null) says what was picked: (partition or null, the offset the rows start after or
    -1); ``_Ahead`` checks it against what the other queries found."""
    e = qualified(schema, "events")
    cols = sql.SQL("agent_id, journal_partition, journal_offset, event_type, payload::text, broker_time")
    q = sql.SQL(
        "with part as (select journal_partition as p from {e} where agent_id = %(key)s limit 1), "
        "cp as (select coalesce((select journal_offset from {c} where agent_id = %(key)s and journal_offset <= "
        "%(offset)s order by seq desc limit 1), -1) as o) "
        "select null::text, (select p from part), (select o from cp), null::text, null::text, null::timestamptz "
        "union all "
        "(select {cols} from {e} where agent_id = %(key)s and journal_offset > (select o from cp) "
        "and journal_offset <= %(offset)s) "
        "union all "
        "(select {cols} from {e} where agent_id = '~p' || (select p from part) and journal_offset > "
        "(select o from cp) and journal_offset <= %(offset)s and verdict = 'accepted') "
        "order by 3").format(e=e, c=qualified(schema, "checkpoints"), cols=cols)
    return q, {"key": storage_key(agent_id), "offset": offset}


@dataclass(frozen=True)
class _Ahead:
    """``_ahead_query``'s answer: the rows after offset ``after`` (-1: all) for a fold on
    ``partition`` (None: the agent had no row)."""

    partition: int | None
    after: int
    rows: list[tuple[Any, ...]]

    @classmethod
    def of(cls, rows: list[tuple[Any, ...]]) -> _Ahead:
        head = rows[0]
        assert head[0] is None, "the first row says what was picked"
        return cls(head[1], head[2], rows[1:])

    def serves(self, partition: int, start: int) -> bool:
        """Whether these are the rows of a fold on ``partition`` from ``start``: the
        queries of the same round trip found the same partition and checkpoint (they
        can differ only for an agent with rows on two partitions, or a checkpoint
        thinned in between)."""
        return self.partition == partition and self.after + 1 == start


def fold_events(conn: psycopg.Connection[Any], schema: str, agent_id: str, partition: int, offset: int, *,
                what: str, complete: int | None = None, checkpoint: Checkpoint | None | Literal[False] = False,
                pseudo: bytes | None | Literal[False] = False, ahead: _Ahead | None = None,
                ) -> tuple[AgentSlot | None, AgentState, int | None, int]:
    """``agent_id``'s slot after the record at ``offset`` of ``partition`` (None: no record
    of it up to there), the partition's marker state there (fold version, recorded
    partition count), the seq of the checkpoint the fold started from (None: offset 0)
    and how many of the agent's records were folded on top of it. The caller checked
    that ``offset`` is projected; ``HistoryIncomplete`` if the fold would need rows below
    the partition's ``complete_from``. What the caller read already, in the same round
    trip as the rest of its queries (``state_at``): ``complete``; ``checkpoint``, the
    nearest checkpoint at or before ``offset`` (None: there is none); ``pseudo``, the
    stored state of the partition's pseudo-agent (None: there is none); ``ahead``, the
    rows, used when they are the ones this fold needs. Whatever is not given is read here."""
    cp = nearest_checkpoint(conn, schema, agent_id, at_offset=offset) if checkpoint is False else checkpoint
    if complete is None:
        complete = complete_from(conn, schema, partition)
    recorded = None if pseudo is False or not needs_recorded_partitions(cp) else recorded_partitions_of(pseudo)
    slot, version, partitions, start = fold_start(conn, schema, partition, cp, recorded=recorded)
    cp_seq = cp.seq if cp is not None and slot is not None else None  # None: folded from offset 0
    if start < complete:
        raise HistoryIncomplete(partition, complete, start, what=what)
    key = storage_key(agent_id)
    if ahead is not None and ahead.serves(partition, start):
        rows = ahead.rows
    else:
        rows_q, rows_params = _rows_query(schema, partition, key, start, offset)
        rows = conn.execute(rows_q, rows_params, binary=True).fetchall()
    marker = AgentSlot(AgentState(agent_id=pseudo_key(partition), fold_version=version, partitions=partitions))
    folded = 0
    for owner, off, etype, payload, at in _fold_rows(rows, partition):
        st = marker.state
        # rows are stored under the key they fold into (fold_key): misrouted ones are not here
        rec = _record(None if owner != key else agent_id, partition, off, etype, payload, ms_of(at))
        if owner != key:
            marker, _ = apply(marker, rec, version=st.fold_version, partitions=st.partitions)
            continue
        slot, _ = apply(slot, rec, version=st.fold_version, partitions=st.partitions, hash_state=False)
        folded += 1
    return slot, marker.state, cp_seq, folded


def state_at(conn: psycopg.Connection[Any], schema: str, agent_id: str, *, offset: int | None = None,
             time_ms: int | None = None) -> PointState:
    """``agent_id``'s state after the record at ``offset`` of its partition, or after its
    last record with broker time <= ``time_ms``. ``NoSuchAgent``: no record at or before
    the point; ``ProjectionBehind`` (a ``HistoryError``): the point is past what the
    projection has committed (``offset`` at or past the partition's next offset;
    ``time_ms`` later than its last projected record); ``HistoryIncomplete``: the fold
    would start below the partition's ``complete_from`` (it needs ``events`` rows the
    schema does not have); ``EventsRowUnfoldable``: a row on the way holds no payload."""
    if (offset is None) == (time_ms is None):
        raise ValueError("give exactly one of offset and time_ms")
    what = f"the state of {agent_id!r} at {'offset ' + str(offset) if time_ms is None else 'a broker time'}"
    cp: Checkpoint | None | Literal[False] = False
    ahead: _Ahead | None = None
    placed_q, placed_params = _placed_query(schema, agent_id)
    if offset is not None:
        # one round trip: where the agent is, the checkpoint the fold starts from and the
        # rows after it (binary: the state's bytes as they are, not hex)
        cp_q, cp_params = nearest_query(schema, agent_id, at_offset=offset)
        ahead_q, ahead_params = _ahead_query(schema, agent_id, offset)
        with conn.pipeline():
            placed_cur = conn.execute(placed_q, placed_params, binary=True)
            cp_cur = conn.execute(cp_q, cp_params, binary=True)
            ahead_cur = conn.execute(ahead_q, ahead_params, binary=True)
        placed = _placed(placed_cur.fetchone())
        cp = checkpoint_of_row(cp_cur.fetchone())
        ahead = _Ahead.of(ahead_cur.fetchall())
    else:
        placed = _placed(conn.execute(placed_q, placed_params, binary=True).fetchone())
    if placed is None:
        require_events(conn, schema, agent_id, what=what)  # all of its records predate the events rows
        raise NoSuchAgent(agent_id, f"no such agent: {agent_id!r} has no projected record")
    key = storage_key(agent_id)
    p, end, last_at, complete = placed.partition, placed.end, placed.last_at, placed.complete
    if time_ms is not None:
        when = ts(time_ms)
        if last_at is None or last_at < when:
            # records at or before that time may still be on their way
            raise ProjectionBehind(p, end, f"broker time {when.isoformat(timespec='milliseconds')} is past the last "
                                           f"record projected of partition {p} (next offset {end})")
        row = conn.execute(
            sql.SQL("select max(journal_offset) from {} where agent_id = %s and broker_time <= %s").format(
                qualified(schema, "events")),
            (key, when),
        ).fetchone()
        if row is None or row[0] is None:
            require_events(conn, schema, agent_id, what=what)  # its rows at that time may be missing
            raise _not_yet(conn, schema, agent_id, f"broker time {when.isoformat(timespec='milliseconds')}", p)
        offset = int(row[0])
    assert offset is not None
    if offset >= end:
        raise ProjectionBehind(p, end, f"offset {offset} is past what is projected of partition {p} (next offset "
                                       f"{end}); ask for an offset below {end}")
    slot, _, cp_seq, folded = fold_events(conn, schema, agent_id, p, offset, what=what, complete=complete,
                                          checkpoint=cp, pseudo=placed.pseudo, ahead=ahead)
    if slot is None:
        raise _not_yet(conn, schema, agent_id, f"offset {offset} of partition {p}", p)
    return PointState(agent_id, p, offset, slot.state.seq, slot.state, state_hash(slot.state), cp_seq, folded)
