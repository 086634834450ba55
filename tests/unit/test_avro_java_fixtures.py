"""Bytes written by Apache Avro's Java BinaryMessageEncoder decode with our codec.

The fixtures (tests/fixtures/avro-java/*.bin) are committed, so this needs no Java; the
*.json beside each is its input and expected value in Avro's JSON encoding. Regenerate
with ``.venv/bin/python tests/support/avro_java.py generate``; the reverse direction
(Java reads what we write) is tests/integration/test_avro_java_interop.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aosk.events import EVENT_TYPES, SCHEMAS, Transition, decode, decode_transition, encode, encode_transition
from avro_java import FIXTURES_DIR, from_avro_json
from event_strategies import NESTED

CASES = sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))


def _expected(spec: dict[str, Any]) -> Any:
    name = spec["schema"]
    schema = SCHEMAS.versions[name][spec["version"] - 1].declared
    values = from_avro_json(schema, spec["datum"], NESTED)
    return Transition(**values) if name == "Transition" else EVENT_TYPES[name](**values)


def test_fixtures_cover_several_types_and_shapes() -> None:
    assert len(CASES) >= 10
    for case in CASES:
        assert (FIXTURES_DIR / f"{case}.bin").exists(), f"{case}.bin missing: regenerate the fixtures"
    types = {json.loads((FIXTURES_DIR / f"{c}.json").read_text())["schema"] for c in CASES}
    assert {"AgentSpawned", "MemoryStored", "ToolCallCompleted", "AgentForked", "Transition"} <= types


@pytest.mark.parametrize("case", CASES)
def test_java_written_fixture_decodes(case: str) -> None:
    spec = json.loads((FIXTURES_DIR / f"{case}.json").read_text(encoding="utf-8"))
    data = (FIXTURES_DIR / f"{case}.bin").read_bytes()
    expected = _expected(spec)
    # Re-encoding gives Java's bytes back (map entries keep the order Java wrote,
    # which is HashMap order, not necessarily the order of the JSON input).
    if spec["schema"] == "Transition":
        assert decode_transition(data) == expected
        assert encode_transition(decode_transition(data)) == data
    else:
        assert decode(data) == expected
        if spec["version"] == len(SCHEMAS.versions[spec["schema"]]):
            assert encode(decode(data)) == data
        else:  # written with an older schema version: re-encoded with the current one, same event
            assert decode(encode(decode(data))) == expected


def test_fixture_headers_carry_our_fingerprints() -> None:
    for case in CASES:
        spec = json.loads((FIXTURES_DIR / f"{case}.json").read_text(encoding="utf-8"))
        data = Path(FIXTURES_DIR / f"{case}.bin").read_bytes()
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == SCHEMAS.versions[spec["schema"]][spec["version"] - 1].fingerprint
