"""The snapshot topic: when agents are snapshotted, the floor, and what a takeover restores."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from streams_support import settings

from aosk.kernel import AgentSlot, Kind, Reason, Verdict, decode_slot, encode_slot, placeholder
from aosk.streams.snapshots import (
    DirtyAgents,
    SnapshotPolicy,
    decode_floor,
    encode_floor,
    encode_snapshot,
    floor_key,
    restore,
)


def _slot(key: str, last: int, seq: int = 1) -> AgentSlot:
    return AgentSlot(replace(placeholder(key, 1), seq=seq), last_offset=last)


def test_due_by_records_by_time_or_everything() -> None:
    d = DirtyAgents(SnapshotPolicy(every_records=3, every_s=10.0))
    for o in (0, 1, 2):
        d.folded(0, "busy", o, now=100.0)
    d.folded(0, "old", 3, now=100.0)
    d.folded(0, "new", 4, now=105.0)
    d.folded(1, "other", 0, now=100.0)
    assert d.due(0, 101.0) == ["busy"]
    assert d.due(0, 110.0) == ["busy", "old"]  # 10 s since its first unsnapshotted record
    d.folded(0, "old", 5, now=111.0)  # a later record does not reset its age
    assert d.due(0, 110.0) == ["busy", "old"]
    assert d.due(0, 101.0, everything=True) == ["busy", "new", "old"]
    assert d.due(7, 1e9, everything=True) == []
    assert d.count() == 4


def test_floor_is_the_oldest_unsnapshotted_record_else_committed() -> None:
    d = DirtyAgents(SnapshotPolicy(every_records=100, every_s=100.0))
    assert d.floor(0, 50) == 50
    d.folded(0, "a", 12, now=0.0)
    d.folded(0, "a", 20, now=0.0)
    d.folded(0, "b", 15, now=0.0)
    assert d.floor(0, 50) == 12 and d.floor(0, 10) == 10
    d.written(0, ["a"])
    assert d.floor(0, 50) == 15
    d.written(0, iter(["b", "missing"]))
    assert d.floor(0, 50) == 50 and d.count() == 0
    d.folded(0, "a", 30, now=1.0)  # dirty again: from its new first record
    assert d.floor(0, 50) == 30
    d.drop([0])
    assert d.floor(0, 50) == 50 and d.due(0, 1e9, everything=True) == []


def test_floor_markers_round_trip_and_are_not_slots() -> None:
    for o in (0, 1, 2**40):
        assert decode_floor(encode_floor(o)) == o
    assert floor_key(3) == b"~floor/3"
    with pytest.raises(ValueError):
        decode_floor(b"XXXX" + encode_floor(5)[4:])
    with pytest.raises(struct.error):
        decode_floor(b"short")
    assert settings(prefix="x").kafka.worker_snapshots_topic == "x-worker-snapshots"


def test_encode_snapshot_drops_kept_verdicts() -> None:
    v = Verdict(kind=Kind.ACCEPTED, reason=Reason.OK, message="m", agent_id="a", partition=0, offset=4,
                timestamp=1, event_id=None, event_type=None, status="RUNNING", seq=2, state_hash=b"\x01",
                fold_version=1)
    slot = AgentSlot(placeholder("a", 1), last_offset=4, recent=(v,))
    assert decode_slot(encode_slot(slot)).recent == (v,)
    back = decode_slot(encode_snapshot(slot))
    assert back.recent == () and back.last_offset == 4 and back.state == slot.state
    plain = AgentSlot(placeholder("a", 1), last_offset=4)
    assert encode_snapshot(plain) == encode_slot(plain)


def test_restore_keeps_the_latest_per_key_the_floor_and_honours_tombstones() -> None:
    recs = [
        (b"a", encode_snapshot(_slot("a", 3))),
        (b"b", encode_snapshot(_slot("b", 4))),
        (floor_key(2), encode_floor(3)),
        (b"a", encode_snapshot(_slot("a", 9, seq=2))),
        (None, b"ignored"),
        (b"b", None),  # tombstone
        (floor_key(5), encode_floor(1)),  # another partition's marker: not a slot
        (floor_key(2), encode_floor(7)),
    ]
    r = restore(2, recs)
    assert r.floor == 7 and r.undecodable == 0
    assert set(r.slots) == {"a"} and r.slots["a"].last_offset == 9 and r.slots["a"].state.seq == 2
    r = restore(2, [(b"a", encode_snapshot(_slot("a", 3))), (floor_key(2), encode_floor(3)), (floor_key(2), None)])
    assert r.floor is None and set(r.slots) == {"a"}
    assert restore(0, []) == restore(0, [(b"x", b"junk"), (b"x", None)])


def test_an_undecodable_value_means_no_floor() -> None:
    r = restore(1, [(b"a", encode_snapshot(_slot("a", 3))), (b"bad", b"not a slot"), (floor_key(1), encode_floor(8))])
    assert r.floor is None and r.undecodable == 1 and set(r.slots) == {"a"}
    r = restore(1, [(b"a", encode_snapshot(_slot("a", 3))), (floor_key(1), b"garbage!")])
    assert r.floor is None and r.undecodable == 1 and set(r.slots) == {"a"}
    # An undecodable value replaced by a readable one later is no problem.
    r = restore(1, [(b"a", b"junk"), (b"a", encode_snapshot(_slot("a", 3))), (floor_key(1), encode_floor(2))])
    assert r.floor == 2 and r.undecodable == 0
