"""Whatever bytes arrive, decode raises only Undecodable or UnknownFingerprint.

The fold turns decode errors into verdicts; any other exception would crash a worker on
one bad record (and every replay after it). Inputs (seeded, reproducible):
pure random bytes, random bodies behind a valid header of every schema version, and
valid encodings mutated (truncated, bit-flipped, bytes inserted/deleted/overwritten,
huge varints spliced in). Every input that does decode must re-encode to the same bytes.
Set AOSK_FUZZ_SEED to explore other inputs; AOSK_FUZZ_N to run more.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from aosk.errors import Undecodable, UnknownFingerprint
from aosk.events import (
    SCHEMAS,
    Transition,
    decode,
    decode_transition,
    encode,
    encode_transition,
)
from event_strategies import example_events

N = int(os.environ.get("AOSK_FUZZ_N", "100000"))
SEED = int(os.environ.get("AOSK_FUZZ_SEED", "20261125"))
MAGIC = b"\xc3\x01"
HUGE_VARINTS = [
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # -2**63 as zigzag
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # 2**63 - 1
    b"\xff" * 11 + b"\x01",  # longer than any long
    b"\x80\x80\x80\x80\x08",  # 2**31 (as zigzag 2**32)
    b"\x01",  # -1
    b"\x7f",  # -64
]


def _valid_inputs() -> list[bytes]:
    valid = [encode(e) for e in example_events()]
    valid.append(encode_transition(Transition(
        journal_partition=1, journal_offset=2, agent_id="a", event_id="e", event_type="AgentStarted",
        verdict="duplicate", reason="r", message="m", status="RUNNING", seq=3,
        state_hash=bytes(32), fold_version=1, timestamp=4)))
    return valid


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(7)
    if op == 0:  # truncate
        return bytes(b[: rng.randrange(len(b))])
    if op == 1:  # flip 1-3 bits in the body (or header)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == 2:  # overwrite a byte with anything
        b[rng.randrange(10, len(b))] = rng.randrange(256)
        return bytes(b)
    if op == 3:  # insert random bytes
        i = rng.randrange(10, len(b) + 1)
        return bytes(b[:i]) + rng.randbytes(rng.randint(1, 4)) + bytes(b[i:])
    if op == 4:  # delete a run
        i = rng.randrange(10, len(b))
        return bytes(b[:i]) + bytes(b[i + rng.randint(1, 4):])
    if op == 5:  # splice a huge / negative varint
        i = rng.randrange(10, len(b))
        return bytes(b[:i]) + rng.choice(HUGE_VARINTS) + bytes(b[i + 1:])
    return bytes(b) + rng.randbytes(rng.randint(1, 3))  # trailing garbage


def _inputs(rng: random.Random, n: int) -> list[bytes]:
    valid = _valid_inputs()
    fingerprints = [sv.fingerprint for versions in SCHEMAS.versions.values() for sv in versions]
    out: list[bytes] = []
    for i in range(n):
        kind = i % 10
        if kind < 3:  # random bytes, sometimes with the marker
            body = rng.randbytes(rng.randrange(0, 48))
            out.append(MAGIC + body if kind == 0 else body)
        elif kind < 6:  # a known fingerprint + a random body
            out.append(MAGIC + rng.choice(fingerprints) + rng.randbytes(rng.randrange(0, 64)))
        else:  # a mutated valid encoding
            out.append(_mutate(rng, rng.choice(valid)))
    return out


def _run(decoder: Callable[[bytes], object], inputs: list[bytes], reencode: Callable[[object], bytes]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for data in inputs:
        try:
            obj = decoder(data)
        except Undecodable:
            outcomes["undecodable"] += 1
        except UnknownFingerprint as e:
            assert e.fingerprint == data[2:10] and len(e.fingerprint) == 8
            outcomes["unknown"] += 1
        except BaseException as e:  # pragma: no cover - the failure being tested for
            raise AssertionError(f"decode({data.hex()}) raised {type(e).__name__}: {e}") from e
        else:
            assert reencode(obj) == data, f"accepted a non-canonical encoding: {data.hex()}"
            outcomes["decoded"] += 1
    return outcomes


def test_decode_raises_only_decode_errors() -> None:
    rng = random.Random(SEED)
    inputs = _inputs(rng, N)
    started = time.perf_counter()
    outcomes = _run(decode, inputs, encode)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    assert sum(outcomes.values()) == N
    # every path is exercised: each kind of failure, and mutations that still decode
    assert outcomes["undecodable"] > N // 3 and outcomes["unknown"] > 0 and outcomes["decoded"] > 0, outcomes
    assert elapsed < 20, f"{N} decodes took {elapsed:.1f}s"


def test_decode_transition_raises_only_decode_errors() -> None:
    rng = random.Random(SEED + 1)
    outcomes = _run(decode_transition, _inputs(rng, N // 10), encode_transition)  # type: ignore[arg-type]
    assert outcomes["undecodable"] > 0


@settings(max_examples=2000)
@given(st.binary(max_size=80), st.sampled_from([sv.fingerprint for vs in SCHEMAS.versions.values() for sv in vs]))
def test_decode_arbitrary_body_behind_a_known_header(body: bytes, fingerprint: bytes) -> None:
    data = MAGIC + fingerprint + body
    try:
        obj = decode(data)
    except Undecodable:
        return
    assert encode(obj) == data
