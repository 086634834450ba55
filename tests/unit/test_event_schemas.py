"""The event classes and the .avsc files say the same thing, and the files are sound.

The classes are written by hand (readable, typed) and checked here against the current
version of each schema: field names, order, Python type, nullability and defaults (a
non-nullable field has a default only when a later schema version added it, e.g.
``KernelUpgraded.partitions``; the class then has the same default). A
divergence in either direction fails with the field named.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing
from importlib import resources
from typing import Any, get_type_hints

import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

import aosk.events as ev
from aosk.events import EVENT_TYPES, KERNEL_ONLY_TYPES, SCHEMAS, Budgets, Event, Transition

STANDALONE = {"Budgets", "Origin", "VerdictKind"}  # named types, not encoded on their own
RECORD_CLASSES: dict[str, type] = {"Budgets": Budgets}


def _expected_annotation(schema: Any) -> Any:
    """The Python type the contract maps an Avro type to."""
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        return _expected_annotation(schema["type"])
    if isinstance(schema, list):
        (inner,) = [b for b in schema if b != "null"]
        assert len(schema) == 2 and "null" in schema, f"only [null, T] unions: {schema}"
        return _expected_annotation(inner) | None
    kind = schema if isinstance(schema, str) else schema["type"]
    simple = {"string": str, "int": int, "long": int, "double": float, "float": float,
              "bytes": bytes, "boolean": bool, "enum": str}
    if kind in simple:
        return simple[kind]
    if kind == "array":
        return tuple[_expected_annotation(schema["items"]), ...]  # type: ignore[misc]
    if kind == "map":
        return dict[str, _expected_annotation(schema["values"])]  # type: ignore[misc]
    if kind == "record":
        return RECORD_CLASSES[schema["name"].rpartition(".")[2]]
    raise AssertionError(f"unexpected Avro type {schema!r}")


def _check_class(cls: type, schema: dict[str, Any]) -> None:
    hints = get_type_hints(cls)
    py_fields = dataclasses.fields(cls)
    assert [f.name for f in py_fields] == [f["name"] for f in schema["fields"]], (
        f"{cls.__name__}: field names/order differ from schemas/{schema['name']}"
    )
    for pf, af in zip(py_fields, schema["fields"], strict=True):
        where = f"{cls.__name__}.{pf.name}"
        assert hints[pf.name] == _expected_annotation(af["type"]), (
            f"{where}: class says {hints[pf.name]}, schema says {af['type']}"
        )
        nullable = isinstance(af["type"], list)
        if nullable:
            assert af.get("default", "missing") is None, f"{where}: nullable without default null"
            assert pf.default is None, f"{where}: nullable field should default to None"
        elif "default" in af:  # added by a later schema version: older records read as the default
            expected = tuple(af["default"]) if isinstance(af["default"], list) else af["default"]  # arrays are tuples
            assert type(pf.default) is type(expected) and pf.default == expected, (
                f"{where}: the class's default {pf.default!r} is not the schema's {af['default']!r}"
            )
        else:
            assert pf.default is dataclasses.MISSING, f"{where}: required in the schema"


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_event_class_matches_current_schema(name: str) -> None:
    cls = EVENT_TYPES[name]
    assert cls.__name__ == name and issubclass(cls, Event)
    _check_class(cls, SCHEMAS.current(name).declared)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [Budgets, Transition])
def test_record_class_matches_current_schema(cls: type) -> None:
    _check_class(cls, SCHEMAS.current(cls.__name__).declared)  # type: ignore[arg-type]


def test_header_is_identical_and_first_in_every_event() -> None:
    header = [f.name for f in dataclasses.fields(Event)]
    assert header == ["event_id", "agent_id", "tenant_id", "occurred_at", "origin",
                      "correlation_id", "causation_id"]
    first = SCHEMAS.current("AgentStarted").declared["fields"][: len(header)]
    for name in EVENT_TYPES:
        assert SCHEMAS.current(name).declared["fields"][: len(header)] == first, name


def test_classes_are_frozen_kw_only_slotted() -> None:
    for cls in [*EVENT_TYPES.values(), Budgets, Transition, Event]:
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, cls
        assert "__slots__" in cls.__dict__, cls
        assert all(f.kw_only for f in dataclasses.fields(cls)), cls


def test_every_schema_directory_is_an_event_or_a_known_record() -> None:
    assert set(SCHEMAS.versions) == set(EVENT_TYPES) | STANDALONE | {"Transition"}


def test_schema_names_and_namespace() -> None:
    for name, versions in SCHEMAS.versions.items():
        for sv in versions:
            assert sv.declared["name"] == name
            assert sv.declared["namespace"] == "aosk.events"


def _named_types(schema: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for b in schema:
            out += _named_types(b)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            out.append(schema)
        for f in schema.get("fields", ()):
            out += _named_types(f["type"])
        for key in ("items", "values"):
            if key in schema:
                out += _named_types(schema[key])
        if isinstance(schema.get("type"), (dict, list)):
            out += _named_types(schema["type"])
    return out


def test_inlined_shared_types_equal_their_standalone_definition() -> None:
    """Budgets, Origin and VerdictKind are copied into each schema (so each file is
    self-contained); every copy in a current schema must equal the standalone file."""
    standalone = {n: to_parsing_canonical_form(SCHEMAS.current(n).declared) for n in STANDALONE}
    seen = set()
    for name in [*EVENT_TYPES, "Transition"]:
        for named in _named_types(SCHEMAS.current(name).declared)[1:]:
            short = named["name"].rpartition(".")[2]
            assert short in standalone, f"{name}: inlined {short} has no schemas/{short}/"
            assert to_parsing_canonical_form(named) == standalone[short], (
                f"{name}: its copy of {short} differs from schemas/{short}/"
            )
            seen.add(short)
    assert seen == STANDALONE


def test_enum_symbols_match_python_constants() -> None:
    assert tuple(SCHEMAS.current("Origin").declared["symbols"]) == ev.ORIGINS
    assert tuple(SCHEMAS.current("VerdictKind").declared["symbols"]) == ev.VERDICT_KINDS


def test_timestamps_are_declared_as_logical_types_but_stay_ints() -> None:
    field = SCHEMAS.current("AgentStarted").declared["fields"][3]
    assert field["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    e = ev.decode(ev.encode(ev.AgentStarted(event_id="e", agent_id="a", tenant_id="t",
                                            occurred_at=1_764_057_600_123_456, origin="client")))
    assert type(e.occurred_at) is int and e.occurred_at == 1_764_057_600_123_456


def test_kernel_only_types() -> None:
    assert KERNEL_ONLY_TYPES == {"AgentForked", "MessageDelivered", "MessageBounced", "CallTimedOut", "TaskCompleted",
                                 "TaskFailed"}
    assert KERNEL_ONLY_TYPES <= set(EVENT_TYPES)


def test_spec_fingerprint_example() -> None:
    """Avro specification: the CRC-64-AVRO fingerprint of schema "null"."""
    assert fingerprint(to_parsing_canonical_form("null"), "CRC-64-AVRO") == "8a8f25cce724dd63"
    assert int.from_bytes(bytes.fromhex("8a8f25cce724dd63"), "little", signed=True) == 7195948357588979594


def test_fingerprints_are_computed_from_the_file_alone() -> None:
    for versions in SCHEMAS.versions.values():
        for sv in versions:
            path = resources.files("aosk.schemas") / sv.name / f"v{sv.version}.avsc"
            raw = json.loads(path.read_text(encoding="utf-8"))
            assert bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")) == sv.fingerprint


def test_public_api_is_pinned() -> None:
    assert sorted(ev.__all__) == sorted([
        "encode", "decode", "encode_transition", "encode_transition_fields", "decode_transition", "Codec", "SCHEMAS",
        "SchemaSet", "SchemaVersion", "InvalidSchemas", "load_schemas", "EVENT_TYPES",
        "KERNEL_ONLY_TYPES", "ORIGINS", "VERDICT_KINDS", "Event", "Budgets", "Transition",
        *EVENT_TYPES,
    ])
    assert all(getattr(ev, n) is not None for n in ev.__all__)


def test_codec_names_load_lazily_from_their_modules() -> None:
    from aosk.events import _avro, _schemas, codec

    assert (ev.Codec, ev.load_schemas, ev.SCHEMAS, ev.decode) == (
        _avro.Codec, _schemas.load_schemas, codec.SCHEMAS, codec.decode)
    assert set(ev.__all__) <= set(dir(ev))
    assert not hasattr(ev, "no_such_name")


def test_events_package_imports_no_infrastructure() -> None:
    code = (
        "import sys, aosk.events\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('confluent_kafka', 'psycopg', 'psycopg_pool', 'faust', 'aiokafka', 'mode') "
        "or m.startswith(('aosk.kernel', 'aosk.client', 'aosk.streams', 'aosk.projectors'))]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_annotations_are_real_types() -> None:
    """Guards the annotation mapping itself (a typo there would make the checks vacuous)."""
    hints = get_type_hints(ev.MemoryStored)
    assert hints["embedding"] == tuple[float, ...] | None
    assert typing.get_origin(hints["metadata"]) is dict
    assert isinstance(hints["embedding"], types.UnionType)
