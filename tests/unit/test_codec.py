"""Single-object encoding round-trips, the exact wire layout, and precise failures."""

from __future__ import annotations

import dataclasses
import math
import struct
from io import BytesIO

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings

from aosk.errors import EventRejected, Undecodable, UnknownFingerprint
from aosk.events import (
    SCHEMAS,
    AgentSpawned,
    AgentStarted,
    Budgets,
    Event,
    KernelUpgraded,
    MemoryStored,
    Transition,
    decode,
    decode_transition,
    encode,
    encode_transition,
)
from event_strategies import any_event, example_events, transitions

HEADER = dict(event_id="e", agent_id="a", tenant_id="t", occurred_at=1, origin="client")


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(any_event())
def test_every_event_type_round_trips(event: Event) -> None:
    data = encode(event)
    back = decode(data)
    assert back == event
    assert type(back) is type(event)
    assert encode(back) == data


@given(transitions())
def test_transitions_round_trip(t: Transition) -> None:
    data = encode_transition(t)
    assert decode_transition(data) == t
    assert encode_transition(decode_transition(data)) == data


def test_wire_layout_is_avro_single_object_encoding() -> None:
    e = AgentStarted(**HEADER)
    data = encode(e)
    sv = SCHEMAS.current("AgentStarted")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == sv.fingerprint
    body = BytesIO()
    schemaless_writer(body, sv.parsed, dataclasses.asdict(e))
    assert data[10:] == body.getvalue()


def test_decoded_values_have_the_contract_types() -> None:
    for e in example_events():
        back = decode(encode(e))
        for f in dataclasses.fields(back):
            value = getattr(back, f.name)
            assert not isinstance(value, list), f"{type(e).__name__}.{f.name} must be a tuple"
        if isinstance(back, (AgentSpawned,)):
            assert isinstance(back.budgets, Budgets) and isinstance(back.capabilities, tuple)
        if isinstance(back, MemoryStored):
            assert isinstance(back.embedding, tuple)


def test_nan_and_infinities_survive_encoding_bit_exactly() -> None:
    """The fold rejects NaN/inf (payload hygiene), so the codec must carry them intact."""
    e = MemoryStored(**HEADER, memory_id="m", text="t", embedding=(math.nan, math.inf, -math.inf),
                     importance=math.nan, metadata={})
    back = decode(encode(e))
    assert math.isnan(back.importance)
    assert struct.pack("<d", back.importance) == struct.pack("<d", math.nan)
    assert back.embedding is not None
    assert math.isnan(back.embedding[0]) and back.embedding[1:] == (math.inf, -math.inf)


def test_transition_and_event_streams_do_not_mix() -> None:
    t = Transition(journal_partition=0, journal_offset=0, agent_id="a", verdict="accepted",
                   reason="", message="", status="READY", seq=0, state_hash=b"", fold_version=1,
                   timestamp=0)
    with pytest.raises(Undecodable, match="Transition v1, not one of the event types"):
        decode(encode_transition(t))
    with pytest.raises(Undecodable, match="not one of the transition types"):
        decode_transition(encode(AgentStarted(**HEADER)))
    with pytest.raises(EventRejected):
        encode(t)  # type: ignore[arg-type]
    with pytest.raises(EventRejected):
        encode_transition(AgentStarted(**HEADER))  # type: ignore[arg-type]


# --- decoding failures -------------------------------------------------------------------


def _valid() -> bytes:
    return encode(AgentStarted(**HEADER))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "shorter than"),
        (b"\xc3\x01\x00", "shorter than"),
        (b"{\"json\": true}", "no single-object marker"),
        (b"\x00\x00\x00\x00\x05" + b"x" * 20, "no single-object marker"),  # Confluent framing
        (_valid()[:-1], "does not decode"),
        (_valid() + b"\x00", "trailing bytes"),
        (_valid()[:10], "does not decode"),
    ],
)
def test_malformed_bytes_are_undecodable(data: bytes, match: str) -> None:
    with pytest.raises(Undecodable, match=match):
        decode(data)


def test_none_value_is_undecodable() -> None:
    with pytest.raises(Undecodable, match="no value"):
        decode(None)  # type: ignore[arg-type]


def test_unknown_fingerprint_carries_the_eight_bytes() -> None:
    data = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(UnknownFingerprint) as info:
        decode(data)
    assert info.value.fingerprint == bytes.fromhex("0123456789abcdef")
    assert "0123456789abcdef" in str(info.value)


def test_bytes_like_inputs_are_accepted() -> None:
    data = _valid()
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


def _origin_offset(data: bytes) -> int:
    """Offset of the origin enum index in an AgentStarted with the HEADER values."""
    # header: 10, event_id "e" (2), agent_id "a" (2), tenant_id "t" (2), occurred_at 1 (1)
    return 10 + 2 + 2 + 2 + 1


def test_negative_enum_index_is_not_read_as_the_last_symbol() -> None:
    """fastavro would index symbols[-1] and read garbage as origin="kernel"."""
    data = bytearray(_valid())
    i = _origin_offset(bytes(data))
    assert data[i] == 0x00  # "client"
    data[i] = 0x01  # zigzag -1
    with pytest.raises(Undecodable, match="canonical"):
        decode(bytes(data))
    data[i] = 0x02  # zigzag 1 = "kernel": legitimate
    assert decode(bytes(data)).origin == "kernel"
    data[i] = 0x04  # index 2: out of range
    with pytest.raises(Undecodable):
        decode(bytes(data))


def test_negative_union_index_is_refused() -> None:
    data = bytearray(_valid())
    i = _origin_offset(bytes(data)) + 1  # correlation_id union index
    assert data[i] == 0x00
    data[i] = 0x01  # zigzag -1 would select the "string" branch
    with pytest.raises(Undecodable):
        decode(bytes(data) + b"\x00")


def test_overlong_varint_is_refused() -> None:
    data = _valid()
    i = _origin_offset(data) - 1  # occurred_at = 1 is the single byte 0x02
    assert data[i] == 0x02
    overlong = data[:i] + b"\x82\x00" + data[i + 1:]  # same value, two bytes
    with pytest.raises(Undecodable, match="canonical"):
        decode(overlong)


def test_eleven_byte_varint_is_refused() -> None:
    data = _valid()
    i = _origin_offset(data) - 1
    with pytest.raises(Undecodable):
        decode(data[:i] + b"\xff" * 10 + b"\x01" + data[i + 1:])


def test_negative_length_is_refused() -> None:
    data = _valid()
    assert data[10] == 0x02  # event_id length 1
    with pytest.raises(Undecodable):
        decode(data[:10] + b"\x01" + data[11:])  # length -1


def test_huge_length_does_not_allocate() -> None:
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"  # zigzag 2**62 - 1
    data = _valid()
    with pytest.raises(Undecodable):
        decode(data[:10] + huge + data[12:])


def test_invalid_utf8_is_undecodable() -> None:
    data = _valid()
    assert data[11:12] == b"e"
    with pytest.raises(Undecodable, match="UnicodeDecodeError"):
        decode(data[:11] + b"\xff" + data[12:])


def test_int_beyond_32_bits_is_undecodable() -> None:
    sv = SCHEMAS.current("KernelUpgraded")
    body = BytesIO()
    schemaless_writer(body, sv.parsed, {**HEADER, "correlation_id": None, "causation_id": None,
                                        "fold_version": 2**40})
    with pytest.raises(Undecodable, match="32-bit"):
        decode(b"\xc3\x01" + sv.fingerprint + body.getvalue())


def test_duplicate_map_keys_are_refused() -> None:
    e = AgentSpawned(**HEADER, name="n", priority=1, capabilities=(),
                     budgets=Budgets(max_tokens=1, max_tool_calls=1, max_steps=1, context_window_tokens=1),
                     metadata={"k": "1"})
    data = encode(e)
    single = b"\x02\x02k\x021\x00"  # one block of 1 entry "k" -> "1", end
    assert data.endswith(single)
    twice = b"\x04\x02k\x021\x02k\x022\x00"
    with pytest.raises(Undecodable, match="canonical"):
        decode(data[: -len(single)] + twice)


# --- encoding failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (KernelUpgraded(**HEADER, fold_version=2**31), "32-bit"),
        (KernelUpgraded(**{**HEADER, "occurred_at": 2**63}, fold_version=1), "does not fit"),
        (AgentStarted(**{**HEADER, "origin": "admin"}), "does not fit"),
        (AgentStarted(**{**HEADER, "agent_id": None}), "does not fit"),  # type: ignore[arg-type]
        (AgentStarted(**{**HEADER, "agent_id": "\ud800"}), "does not fit"),
        # fastavro's (branch, value) union notation must not let a tuple pass as a str
        (AgentStarted(**HEADER, correlation_id=("string", "x")), "does not fit"),  # type: ignore[arg-type]
        (MemoryStored(**HEADER, memory_id="m", text="t", embedding=("x",), importance=0.5,  # type: ignore[arg-type]
                      metadata={}), "does not fit"),
    ],
)
def test_values_that_do_not_fit_are_rejected(event: Event, match: str) -> None:
    with pytest.raises(EventRejected, match=match):
        encode(event)


def test_base_event_cannot_be_encoded() -> None:
    with pytest.raises(EventRejected, match="no schema among the event types"):
        encode(Event(**HEADER))
