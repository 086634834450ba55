"""The state's canonical bytes, its hash, decoding, slots, verdict bytes and size bounds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from kernel_support import EMB, Sim, ev, spawn_running

import aosk.kernel as kernel
from aosk.events import Budgets
from aosk.kernel import (
    VERSIONS,
    Kind,
    StateDecodeError,
    canonical_verdict_bytes,
    decode_slot,
    decode_state,
    encode_slot,
    encode_state,
    event_from_plain,
    event_to_plain,
    placeholder,
    state_hash,
)
from aosk.kernel.canonical import canonical_json

A, B = "a-1", "b-1"
P = VERSIONS[1]


def busy_sim() -> Sim:
    """A journal touching every part of the state, unicode and escapes included."""
    sim = Sim()
    spawn_running(sim, A, name="ägent \"quoted\" \\ back", metadata={"z": "1", "a": "é\n\t☃"},
                  capabilities=("search", "calc"))
    spawn_running(sim, B)
    for i, imp in enumerate((0.1, 0.3333333333333333, 0.95, 1.0, 0.0, 1e-300)):
        sim.produce(ev("ContextAppended", A, entry_id=f"e{i}", content=f"line {i}\n\"☃\"\x01", importance=imp))
    sim.produce(ev("ContextAppended", A, entry_id="neg0", importance=-0.0))
    sim.produce(ev("LlmCallRequested", A, call_id="c1"))
    sim.produce(ev("ToolCallRequested", A, call_id="t1", arguments='{"a": [1, 2.5]}'))
    sim.produce(ev("MessageSent", B, message_id="m1", to_agent_id=A, body="hi \u2028 there"))
    sim.produce(ev("MemoryStored", A, memory_id="m", embedding=EMB))
    sim.produce(ev("AgentWaiting", A, on="c1"))
    sim.tick(5_000)
    return sim


def test_encoding_is_sorted_compact_json_identical_to_the_reference() -> None:
    sim = busy_sim()
    for slot in sim.slots.values():
        b = encode_state(slot.state)
        assert canonical_json(json.loads(b)) == b
    assert b"-0.0" not in encode_state(sim.state(A))  # -0.0 is normalised
    assert sim.state(A).window.entries[-1].importance == 0.0


def test_a_small_state_encodes_to_these_exact_bytes() -> None:
    # Pins the format: a change here is a new fold version.
    assert encode_state(placeholder("a", 1)) == (
        b'{"agent_id":"a","budgets":null,"calls":{"open":[],"timed_out":[]},"capabilities":[],'
        b'"counters":{"children_requested":0,"memories_forgotten":0,"memories_stored":0,'
        b'"messages_bounced":0,"messages_received":0,"messages_sent":0},'
        b'"dedupe":{"bounce_hwm":[],"delivery_hwm":[],"event_ids":[]},"fold_version":1,"identity":null,'
        b'"inbox":[],"life":{"error":null,"exit_code":null,"exit_reason":null,"killed_by":null,"signal":null,'
        b'"suspend_reason":null,"waiting_on":null},"seq":0,"status":"NONE",'
        b'"usage":{"steps":0,"tokens":0,"tool_calls":0},"window":[]}'
    )


def test_hash_is_sha256_of_the_bytes_and_every_verdict_carries_the_state_after_it() -> None:
    sim = busy_sim()
    for r, v in zip(sim.records, sim.verdicts, strict=True):
        st = sim.history[r.agent_key][v.seq]
        assert v.state_hash == hashlib.sha256(encode_state(st)).digest() == state_hash(st)


def test_decode_round_trips_every_state_of_a_journal() -> None:
    sim = busy_sim()
    for states in sim.history.values():
        for st in states.values():
            b = encode_state(st)
            back = decode_state(b)
            assert back == st and encode_state(back) == b
            assert decode_state(b) == st and st.to_bytes() == b
            assert [e.evict_key for e in back.window.entries] == [e.evict_key for e in st.window.entries]
            assert (back.window.tokens, back.window.nbytes, back.inbox.nbytes) == (
                st.window.tokens, st.window.nbytes, st.inbox.nbytes)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b + b" ",
        lambda b: b.replace(b'"seq":', b'"seq": '),
        lambda b: b.replace(b'"status":"RUNNING"', b'"status":"FLYING"'),
        lambda b: b.replace(b'"seq":', b'"extra":1,"seq":'),
        lambda b: b.replace(b',"usage"', b',"usagex"'),
        lambda b: b.replace(b'"fold_version":1', b'"fold_version":"1"'),
        lambda b: b.replace(b'"fold_version":1', b'"fold_version":77'),
        lambda b: b.replace(b'"importance":0.5', b'"importance":NaN'),
        lambda b: b.replace(b'"importance":0.5', b'"importance":1'),
        lambda b: b"\xff" + b,
        lambda b: b"[]",
    ],
)
def test_decode_refuses_what_is_not_canonical(mutate: Callable[[bytes], bytes]) -> None:
    sim = Sim()
    spawn_running(sim, A)
    sim.produce(ev("ContextAppended", A, importance=0.5))
    good = encode_state(sim.state(A))
    bad = mutate(good)
    assert bad != good
    with pytest.raises(StateDecodeError):
        decode_state(bad)


def test_hash_state_false_changes_nothing_but_the_hash() -> None:
    from aosk.kernel import fold_with_verdicts

    sim = busy_sim()
    slots, verdicts = fold_with_verdicts(sim.records, hash_state=False)
    assert all(v.state_hash == b"" for v in verdicts)
    assert [replace(v, state_hash=b"") for v in sim.verdicts] == verdicts
    assert {k: s.state for k, s in slots.items()} == {k: s.state for k, s in sim.slots.items()}
    assert [canonical_verdict_bytes(v) for v in verdicts] == [canonical_verdict_bytes(v) for v in sim.verdicts]


def test_slot_round_trip_and_framing() -> None:
    sim = busy_sim()
    for slot in sim.slots.values():
        data = encode_slot(slot)
        back = decode_slot(data)
        assert back == slot
        assert all(v.derived == () and v.paged_out == () for v in back.recent)
    with pytest.raises(StateDecodeError):
        decode_slot(b"XXXX" + encode_slot(sim.slots[A])[4:])
    with pytest.raises(StateDecodeError):
        decode_slot(b"AK")


def test_events_as_plain_json_round_trip() -> None:
    sim = busy_sim()
    for r in sim.records:
        if r.event is not None:
            plain = event_to_plain(r.event)
            assert event_from_plain(json.loads(json.dumps(plain))) == r.event


def test_canonical_verdict_bytes_leave_the_message_and_state_hash_out() -> None:
    sim = busy_sim()
    v = next(v for v in sim.verdicts if v.derived)
    b = canonical_verdict_bytes(v)
    d = json.loads(b)
    assert canonical_json(d) == b
    assert sorted(d) == ["agent_id", "checkpoint_due", "derived", "event_id", "event_type", "fold_version", "kind",
                         "offset", "paged_out", "partition", "reason", "seq", "status", "timestamp"]
    assert d["derived"] == [e.event_id for e in v.derived]
    assert canonical_verdict_bytes(replace(v, message="reworded", state_hash=b"")) == b
    t = v.to_transition()
    assert (t.verdict, t.reason, t.seq, t.state_hash, t.journal_offset) == (v.kind, v.reason, v.seq, v.state_hash,
                                                                              v.offset)


def test_every_reason_code_is_documented() -> None:
    codes = {v for k, v in vars(kernel.Reason).items() if not k.startswith("_")}
    assert codes == set(kernel.REASONS)
    doc = (__import__("pathlib").Path(__file__).parents[3] / "docs" / "kernel.md").read_text()
    missing = [c for c in codes if f"`{c}`" not in doc]
    assert not missing, f"reason codes missing from docs/kernel.md: {missing}"


def test_worst_case_state_stays_under_its_bound() -> None:
    """Every cap at its maximum, with the most expensive characters JSON has to escape."""
    sim = Sim()
    big = Budgets(max_tokens=10**12, max_tool_calls=10**6, max_steps=10**6, context_window_tokens=10**9)
    md = {f"{'k' * 250}{i:03d}": "\x01" * (1024 // 6) for i in range(32)}
    caps = tuple(f"{'c' * 250}{i:03d}" for i in range(64))
    spawn_running(sim, A, budgets=big, metadata=md, capabilities=caps, name="n" * 256)
    spawn_running(sim, B, budgets=big)
    n = 0
    while True:  # fill the window by bytes (escapes make a 16 KiB entry ~96 KiB)
        v = sim.produce(ev("ContextAppended", A, entry_id=f"{'e' * 250}{n:04d}", content="\x01" * 16_384,
                           tokens=1, importance=0.99))
        n += 1
        if v.kind != Kind.ACCEPTED:
            break
    for i in range(40):
        sim.produce(ev("MessageSent", B, message_id=f"{'m' * 250}{i:03d}", to_agent_id=A, body="\x02" * 4096))
    for i in range(32):
        sim.produce(ev("LlmCallRequested", A, call_id=f"{'x' * 250}{i:03d}", model="m" * 256,
                       prompt_hash="h" * 256))
    sim.produce(ev("AgentWaiting", A, on="\x03" * 5000))
    sim.produce(ev("AgentSuspended", A, reason="\x04" * 5000))
    for _ in range(64):
        sim.produce(ev("CheckpointRequested", A))
    st = sim.state(A)
    assert len(st.inbox.messages) < 32 and len(st.calls.open) == 32 and len(st.capabilities) == 64
    size = len(encode_state(st))
    assert size < P.state_max_bytes, size
    assert len(encode_slot(sim.slots[A])) < 1_000_000
