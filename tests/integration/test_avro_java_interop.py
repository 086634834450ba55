"""Apache Avro's Java implementation reads what aosk.events writes.

Java's ``BinaryMessageDecoder`` (every version of every schema registered, reading
into the current one) decodes files our codec wrote and prints Avro JSON, which must
give back the very events. Java's ``SchemaNormalization`` fingerprints must equal ours.
The reverse direction runs without Java from committed fixtures
(tests/unit/test_avro_java_fixtures.py). Needs a JDK and Maven (skipped otherwise);
no broker or database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aosk.events import EVENT_TYPES, SCHEMAS, Transition, encode, encode_transition
from avro_java import SCHEMAS_DIR, from_avro_json, missing_tools, run
from event_strategies import NESTED, any_event, example_events, transitions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_tools() is not None, reason=f"Apache Avro Java check: {missing_tools()}"),
]


def _java_decode(tmp: Path, objects: list[Any]) -> list[dict[str, Any]]:
    files = []
    for i, obj in enumerate(objects):
        path = tmp / f"{i:04d}.bin"
        path.write_bytes(encode_transition(obj) if isinstance(obj, Transition) else encode(obj))
        files.append(str(path))
    out = run("decode", str(SCHEMAS_DIR), *files)
    # split on "\n" only: str.splitlines() also splits on U+0085 etc. inside values
    return [json.loads(line) for line in out.rstrip("\n").split("\n")]


def _check(tmp: Path, objects: list[Any]) -> None:
    lines = _java_decode(tmp, objects)
    assert len(lines) == len(objects)
    for obj, line in zip(objects, lines, strict=True):
        assert "error" not in line, f"Java could not decode {type(obj).__name__}: {line['error']}"
        name = type(obj).__name__
        assert line["schema"] == name and line["version"] == SCHEMAS.current(name).version
        values = from_avro_json(SCHEMAS.current(name).declared, line["datum"], NESTED)
        cls = Transition if name == "Transition" else EVENT_TYPES[name]
        assert cls(**values) == obj


def test_java_fingerprints_equal_ours() -> None:
    java = {}
    for line in run("fingerprints", str(SCHEMAS_DIR)).split("\n"):
        if line:
            name, version, fp = line.split()
            java[(name, int(version))] = fp
    ours = {(n, sv.version): sv.fingerprint.hex() for n, vs in SCHEMAS.versions.items() for sv in vs}
    assert java == ours


def test_java_reads_one_event_of_every_type(tmp_path: Path) -> None:
    _check(tmp_path, [*example_events()])


@settings(max_examples=3, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(st.lists(any_event(), min_size=40, max_size=40), st.lists(transitions(), min_size=5, max_size=5))
def test_java_reads_generated_events(tmp_path: Path, events: list[Any], verdicts: list[Any]) -> None:
    for old in tmp_path.glob("*.bin"):
        old.unlink()
    _check(tmp_path, [*events, *verdicts])
