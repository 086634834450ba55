"""The one-pass strict reader (``aosk.events._strict``) decides exactly as the reference.

``Codec.decode`` reads a current-version body in one pass that also proves it canonical;
anything that pass does not accept goes to the reference path (fastavro read, encode
again, compare). The reference below decides every input by that path alone. For every
input, both must give the same outcome: the
same value (compared type- and bit-exactly: ``True`` is not ``1``, ``-0.0`` is not
``0.0``, NaN payloads count) or the same exception type with the same message.

Inputs (seeded, reproducible): hypothesis events of every type (long strings too),
each mutated at a random position; and a seeded fuzz of valid encodings with bit flips,
truncations, overlong / huge / negative varints spliced in, enum / union / boolean bytes
changed, NaN payloads written over floats, map and array blocks split. Set
AOSK_FUZZ_SEED / AOSK_FUZZ_N to explore more.
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aosk.errors import Undecodable, UnknownFingerprint
from aosk.events import (
    EVENT_TYPES,
    SCHEMAS,
    Codec,
    MemoryStored,
    Transition,
    encode,
    encode_transition,
)
from aosk.events._avro import HEADER_SIZE, _Reader
from event_strategies import any_event, example_events, transitions

N = int(os.environ.get("AOSK_FUZZ_N", "20000"))
SEED = int(os.environ.get("AOSK_FUZZ_SEED", "20261126"))


class ReferenceCodec(Codec):
    """``Codec`` deciding every record by the reference path alone (no one-pass reader)."""

    def _read(self, reader: _Reader, data: bytes) -> Any:
        return self._read_reference(reader, data)


EVENTS = Codec(SCHEMAS, EVENT_TYPES, family="event")
TRANSITIONS = Codec(SCHEMAS, {"Transition": Transition}, family="transition")
REF_EVENTS = ReferenceCodec(SCHEMAS, EVENT_TYPES, family="event")
REF_TRANSITIONS = ReferenceCodec(SCHEMAS, {"Transition": Transition}, family="transition")


def exact(v: Any) -> Any:
    """A form of ``v`` whose equality is type- and bit-exact."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, tuple((f.name, exact(getattr(v, f.name))) for f in dataclasses.fields(v)))
    if isinstance(v, float):
        return ("float", struct.pack("<d", v))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(exact(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((exact(k), exact(x)) for k, x in v.items()))
    return (type(v).__name__, v)


def outcome(codec: Codec, data: bytes) -> tuple[Any, ...]:
    try:
        value = codec.decode(data)
    except UnknownFingerprint as e:
        return ("unknown", e.fingerprint, str(e))
    except Undecodable as e:
        return ("undecodable", str(e))
    return ("ok", exact(value))


def assert_same(data: bytes) -> str:
    """Both decoders agree on ``data``; returns the outcome kind."""
    codecs = (EVENTS, REF_EVENTS) if data[2:10] not in TRANSITIONS._readers else (TRANSITIONS, REF_TRANSITIONS)
    got, want = outcome(codecs[0], data), outcome(codecs[1], data)
    assert got == want, f"decode({data.hex()}): one-pass {got!r}, reference {want!r}"
    return str(want[0])


# --- mutations ---------------------------------------------------------------------------

VARINTS = [
    b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"\x7e", b"\x7f", b"\x80\x00", b"\x80\x01", b"\xff\x00",
    b"\x81\x80\x00", b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\xff" * 10 + b"\x00", b"\xff" * 11 + b"\x01", b"\x80\x80\x80\x80\x08", b"\xfe\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x10",
]
NANS = [
    struct.pack("<f", float("nan")), b"\x01\x00\x80\x7f", b"\x01\x00\xc0\xff", b"\xff\xff\xff\x7f",
    struct.pack("<d", float("nan")), b"\x01\x00\x00\x00\x00\x00\xf0\x7f", b"\x00\x00\x00\x00\x00\x00\xf8\xff",
    struct.pack("<d", -0.0), struct.pack("<f", float("inf")),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) <= HEADER_SIZE:  # cut down to the header by an earlier mutation
        return bytes(b) + rng.randbytes(rng.randint(1, 4))
    i = rng.randrange(HEADER_SIZE, len(b))
    op = rng.randrange(10)
    if op == 0:  # truncate
        return bytes(b[: rng.randrange(HEADER_SIZE, len(b) + 1)])
    if op == 1:  # flip bits
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(HEADER_SIZE, len(b))
            b[j] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == 2:  # a small byte: enum / union / boolean / length changes
        b[i] = rng.choice([0, 1, 2, 3, 4, 5, 6, 0x7E, 0x7F, 0x80, 0x81, 0xFF])
        return bytes(b)
    if op == 3:  # the same varint made one byte longer (overlong)
        if b[i] < 0x80:
            return bytes(b[:i]) + bytes([b[i] | 0x80, 0]) + bytes(b[i + 1:])
        return bytes(b[:i]) + b"\x80" + bytes(b[i:])
    if op == 4:  # splice a varint over one byte
        return bytes(b[:i]) + rng.choice(VARINTS) + bytes(b[i + 1:])
    if op == 5:  # insert a varint
        return bytes(b[:i]) + rng.choice(VARINTS) + bytes(b[i:])
    if op == 6:  # overwrite with a NaN payload (or another special float)
        nan = rng.choice(NANS)
        return bytes(b[:i]) + nan + bytes(b[i + len(nan):])
    if op == 7:  # delete a run
        return bytes(b[:i]) + bytes(b[i + rng.randint(1, 4):])
    if op == 8:  # trailing bytes
        return bytes(b) + rng.randbytes(rng.randint(1, 3))
    return bytes(b[:i]) + rng.randbytes(rng.randint(1, 4)) + bytes(b[i:])  # insert random bytes


# --- the tests -----------------------------------------------------------------------------


def _long_strings(data: st.DataObject, event: Any) -> Any:
    """``event`` with some string fields long enough for multi-byte length prefixes."""
    changes = {}
    for f in dataclasses.fields(event):
        if isinstance(getattr(event, f.name), str) and data.draw(st.booleans()):
            changes[f.name] = data.draw(st.text(min_size=60, max_size=200))
    return dataclasses.replace(event, **changes)


@settings(max_examples=1500, deadline=None)
@given(st.data(), any_event(), st.integers(0, 2**32))
def test_every_event_and_its_mutations_decode_as_in_the_reference(data: st.DataObject, event: Any,
                                                                 seed: int) -> None:
    if data.draw(st.booleans()):
        event = _long_strings(data, event)
    try:
        valid = encode(event)
    except Exception:  # noqa: BLE001 - an event that does not fit (e.g. a lone surrogate)
        return
    assert assert_same(valid) == "ok"
    rng = random.Random(seed)
    for _ in range(8):
        assert_same(mutate(rng, valid))


@settings(max_examples=300, deadline=None)
@given(transitions(), st.integers(0, 2**32))
def test_transitions_and_their_mutations_decode_as_in_the_reference(t: Transition, seed: int) -> None:
    valid = encode_transition(t)
    assert assert_same(valid) == "ok"
    rng = random.Random(seed)
    for _ in range(8):
        assert_same(mutate(rng, valid))


def test_seeded_fuzz_decodes_as_in_the_reference() -> None:
    rng = random.Random(SEED)
    valid = [encode(e) for e in example_events()]
    fingerprints = [sv.fingerprint for vs in SCHEMAS.versions.values() for sv in vs]
    kinds: dict[str, int] = {}
    for n in range(N):
        if n % 10 == 0:  # a random body behind a known header
            data = b"\xc3\x01" + rng.choice(fingerprints) + rng.randbytes(rng.randrange(0, 64))
        else:
            data = rng.choice(valid)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                data = mutate(rng, data)
        kind = assert_same(data)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("ok", 0) > N // 50 and kinds.get("undecodable", 0) > N // 3, kinds


@pytest.mark.parametrize("nan", NANS)
def test_nan_payloads_in_floats_and_embeddings_decode_as_in_the_reference(nan: bytes) -> None:
    e = MemoryStored(event_id="e", agent_id="a", tenant_id="t", occurred_at=1, origin="client",
                     memory_id="m", text="t", embedding=(1.0, 2.0), importance=0.5, metadata={})
    data = encode(e)
    one, two, half = struct.pack("<f", 1.0), struct.pack("<f", 2.0), struct.pack("<d", 0.5)
    for old in (one, two, half):
        if len(nan) == len(old):
            assert assert_same(data.replace(old, nan, 1)) in ("ok", "undecodable")


def test_split_and_negative_blocks_decode_as_in_the_reference() -> None:
    e = MemoryStored(event_id="e", agent_id="a", tenant_id="t", occurred_at=1, origin="client",
                     memory_id="m", text="t", embedding=(1.0, 2.0), importance=0.5, metadata={"a": "1", "b": "2"})
    data = encode(e)
    one, two = struct.pack("<f", 1.0), struct.pack("<f", 2.0)
    block = b"\x04" + one + two + b"\x00"
    assert block in data
    split = b"\x02" + one + b"\x02" + two + b"\x00"
    negative = b"\x03\x10" + one + two + b"\x00"  # count -2 with its byte size
    for other in (split, negative, b"\x04" + one + two + b"\x02" + one + b"\x00"):
        assert assert_same(data.replace(block, other)) == "undecodable"
    entries = b"\x04\x02a\x021\x02b\x022\x00"
    assert data.endswith(entries)
    for other in (b"\x02\x02a\x021\x02\x02b\x022\x00", b"\x03\x0c\x02a\x021\x02b\x022\x00",
                  b"\x04\x02a\x021\x02a\x022\x00", b"\x00"):
        assert_same(data[: -len(entries)] + other)


def test_the_one_pass_reader_covers_every_current_schema() -> None:
    """No schema silently falls back to the slow path for valid records."""
    for codec in (EVENTS, TRANSITIONS):
        for reader in codec._readers.values():
            assert reader.strict is not None or reader.current is not None, reader.version.name


def test_undecodable_reasons_name_no_memory_address() -> None:
    """A reason goes into verdicts and audit rows, which a rebuild must reproduce."""
    data = encode(MemoryStored(event_id="e", agent_id="a", tenant_id="t", occurred_at=1, origin="client",
                               memory_id="m", text="t", embedding=None, importance=0.5, metadata={}))
    cut = data[: data.index(struct.pack("<d", 0.5)) + 3]  # the double is cut short
    with pytest.raises(Undecodable, match="cannot read double") as e:
        EVENTS.decode(cut)
    assert "0x" not in str(e.value)


def test_the_one_pass_reader_builds_the_object_the_constructor_builds() -> None:
    """``from_strict`` writes the slots instead of calling ``cls(**record)``: every
    class must qualify (else the speed-up is silently lost) and the object must be
    indistinguishable: same class, fields, ==, hash (where hashable) and repr."""
    for codec in (EVENTS, TRANSITIONS):
        for reader in codec._readers.values():
            assert reader.shape._writes is not None, reader.version.name
    verdict = Transition(journal_partition=1, journal_offset=2, agent_id="a", verdict="accepted", reason="ok",
                         message="m", status="READY", seq=3, state_hash=b"h", fold_version=1, timestamp=4)
    for event in [*example_events(), verdict]:
        is_transition = isinstance(event, Transition)
        data = encode_transition(event) if is_transition else encode(event)
        codec = TRANSITIONS if is_transition else EVENTS
        reader = codec._readers[data[2:HEADER_SIZE]]
        assert reader.strict is not None
        built = reader.shape.from_strict(reader.strict(data, HEADER_SIZE))
        constructed = reader.shape.to_python(reader.strict(data, HEADER_SIZE))
        assert type(built) is type(constructed) is type(event)
        assert exact(built) == exact(constructed) == exact(event)
        assert built == constructed and repr(built) == repr(constructed)
        try:
            want = hash(constructed)
        except TypeError:  # a dict field (metadata): unhashable either way
            with pytest.raises(TypeError):
                hash(built)
        else:
            assert hash(built) == want
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.agent_id = "x"  # type: ignore[misc]
