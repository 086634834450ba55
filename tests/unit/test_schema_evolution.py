"""Old events stay readable: every older schema version resolves into the current one.

Two layers: the loader proves it statically (``_compat``, Avro's resolution rules) and
refuses to load otherwise; these tests also prove it dynamically, by writing
Hypothesis-generated records with the OLD schema and decoding them with the codec.

The repository's schemas are all at v1 today, so the dynamic check also runs against a
synthetic evolution built in a temporary copy of schemas/ (real history is not
polluted with fake versions). As soon as a real v2 lands, its pairs join the
parametrization automatically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aosk.errors import Undecodable
from aosk.events import EVENT_TYPES, SCHEMAS, Codec, InvalidSchemas, SchemaSet, load_schemas
from aosk.events._compat import incompatibilities
from event_strategies import datum

MAGIC = b"\xc3\x01"


def _current(name: str) -> dict[str, Any]:
    return copy.deepcopy(dict(SCHEMAS.current(name).declared))


def _without(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in names]
    return schema


def _retyped(schema: dict[str, Any], **types: Any) -> dict[str, Any]:
    for f in schema["fields"]:
        if f["name"] in types:
            f["type"] = types[f["name"]]
    return schema


def _synthetic_history() -> dict[str, list[dict[str, Any]]]:
    """Plausible past versions of three types; the last version is the real current one."""
    failed_v1 = _without(_current("AgentFailed"), "causation_id")
    failed_v1["fields"].append({"name": "stack", "type": "string"})  # dropped later
    context_v1 = _retyped(_current("ContextAppended"), importance="float")  # widened later
    memory_v1 = _without(_current("MemoryStored"), "embedding", "correlation_id")
    memory_v2 = _without(_current("MemoryStored"), "embedding")  # embedding added in v3
    return {
        "AgentFailed": [failed_v1, _current("AgentFailed")],
        "ContextAppended": [context_v1, _current("ContextAppended")],
        "MemoryStored": [memory_v1, memory_v2, _current("MemoryStored")],
    }


def _write_versions(root: Path, name: str, versions: list[dict[str, Any]]) -> None:
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i, schema in enumerate(versions, start=1):
        (directory / f"v{i}.avsc").write_text(json.dumps(schema, indent=2), encoding="utf-8")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SchemaSet, Codec]:
    root = tmp_path_factory.mktemp("schemas")
    source = resources.files("aosk.schemas")
    for entry in source.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            _write_versions(root, entry.name, [
                json.loads((entry / f"v{sv.version}.avsc").read_text(encoding="utf-8"))
                for sv in SCHEMAS.versions[entry.name]
            ])
    for name, versions in _synthetic_history().items():
        _write_versions(root, name, versions)
    schemas = load_schemas(root)
    return schemas, Codec(schemas, EVENT_TYPES)


REAL_PAIRS = [("real", name, sv.version) for name, vs in SCHEMAS.versions.items() for sv in vs[:-1]
              if name in EVENT_TYPES]
SYNTHETIC_PAIRS = [("synthetic", name, v) for name, vs in _synthetic_history().items()
                   for v in range(1, len(vs))]


def _encode_with(schemas: SchemaSet, name: str, version: int, record: dict[str, Any]) -> bytes:
    sv = schemas.versions[name][version - 1]
    body = BytesIO()
    schemaless_writer(body, sv.parsed, record, disable_tuple_notation=True)
    return MAGIC + sv.fingerprint + body.getvalue()


def _same(written: Any, read: Any) -> bool:
    """Written (fastavro dict form, old version) equals read (codec form, current)."""
    if isinstance(written, list):
        return tuple(written) == read
    if isinstance(written, dict) and dataclasses.is_dataclass(read):
        return all(getattr(read, k) == v for k, v in written.items())
    return bool(written == read)  # int->long, float->double keep the value


@pytest.mark.parametrize(("source", "name", "version"), REAL_PAIRS + SYNTHETIC_PAIRS,
                         ids=lambda v: str(v))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_old_versions_decode_into_the_current_class(
    synthetic: tuple[SchemaSet, Codec], source: str, name: str, version: int, data: st.DataObject
) -> None:
    schemas, codec = (SCHEMAS, None) if source == "real" else synthetic
    if codec is None:
        from aosk.events.codec import _EVENTS as codec  # the production codec
    old = schemas.versions[name][version - 1]
    current = schemas.current(name)
    record = data.draw(datum(old.declared, python=False))
    event = codec.decode(_encode_with(schemas, name, version, record))
    assert type(event) is EVENT_TYPES[name]
    old_fields = {f["name"] for f in old.declared["fields"]}
    for f in current.declared["fields"]:
        value = getattr(event, f["name"])
        if f["name"] in old_fields:
            assert _same(record[f["name"]], value), f["name"]
        else:
            default = tuple(f["default"]) if isinstance(f["default"], list) else f["default"]  # arrays are tuples
            assert value == default, f"{f['name']} should take its default"


def test_synthetic_codec_writes_the_current_version(synthetic: tuple[SchemaSet, Codec]) -> None:
    schemas, codec = synthetic
    from event_strategies import example_events

    for e in example_events():
        data = codec.encode(e)
        name = type(e).__name__
        assert data[2:10] == schemas.current(name).fingerprint
        assert codec.decode(data) == e
    assert schemas.current("MemoryStored").version == 3


def test_an_old_version_body_must_still_be_canonical(synthetic: tuple[SchemaSet, Codec]) -> None:
    schemas, codec = synthetic
    record = {"event_id": "e", "agent_id": "a", "tenant_id": "t", "occurred_at": 1, "origin": "client",
              "correlation_id": None, "error": "boom", "stack": "trace"}
    data = _encode_with(schemas, "AgentFailed", 1, record)
    failed = codec.decode(data)
    assert (failed.error, failed.causation_id) == ("boom", None)
    with pytest.raises(Undecodable):
        codec.decode(data + b"\x00")


def test_every_real_version_is_statically_compatible_with_the_current() -> None:
    for name, versions in SCHEMAS.versions.items():
        for old in versions[:-1]:
            assert incompatibilities(old.declared, versions[-1].declared) == [], (name, old.version)


# --- the loader refuses unsafe schema sets ------------------------------------------------


def _load_one(tmp_path: Path, name: str, versions: list[Any]) -> SchemaSet:
    _write_versions(tmp_path, name, versions)
    return load_schemas(tmp_path)


def test_loader_accepts_the_synthetic_history(synthetic: tuple[SchemaSet, Codec]) -> None:
    schemas, _ = synthetic
    assert [sv.version for sv in schemas.versions["MemoryStored"]] == [1, 2, 3]
    assert len(schemas.by_fingerprint) == sum(len(v) for v in schemas.versions.values())


def test_loader_refuses_a_version_with_the_same_fingerprint(tmp_path: Path) -> None:
    v2 = _current("AgentStarted")
    v2["doc"] = "only the documentation changed"
    with pytest.raises(InvalidSchemas, match="same fingerprint"):
        _load_one(tmp_path, "AgentStarted", [_current("AgentStarted"), v2])


def test_loader_refuses_a_new_field_without_default(tmp_path: Path) -> None:
    v2 = _current("AgentStarted")
    v2["fields"].append({"name": "host", "type": "string"})
    with pytest.raises(InvalidSchemas, match="cannot read records written with v1.*host.*no default"):
        _load_one(tmp_path, "AgentStarted", [_current("AgentStarted"), v2])


def test_loader_refuses_an_incompatible_type_change(tmp_path: Path) -> None:
    v2 = _retyped(_current("AgentWaiting"), on="long")
    with pytest.raises(InvalidSchemas, match="writer type string cannot be read as long"):
        _load_one(tmp_path, "AgentWaiting", [_current("AgentWaiting"), v2])


def test_loader_refuses_a_narrowing(tmp_path: Path) -> None:
    v2 = _retyped(_current("ForkRequested"), at_seq="int")
    with pytest.raises(InvalidSchemas, match="long cannot be read as int"):
        _load_one(tmp_path, "ForkRequested", [_current("ForkRequested"), v2])


def test_loader_refuses_a_removed_enum_symbol(tmp_path: Path) -> None:
    v2 = _current("AgentStarted")
    v2["fields"][4]["type"]["symbols"] = ["client"]
    with pytest.raises(InvalidSchemas, match=r"enum symbols \['kernel'\]"):
        _load_one(tmp_path, "AgentStarted", [_current("AgentStarted"), v2])


def test_loader_refuses_making_a_field_required(tmp_path: Path) -> None:
    v2 = _retyped(_current("ToolCallCompleted"), error="string")
    del next(f for f in v2["fields"] if f["name"] == "error")["default"]
    with pytest.raises(InvalidSchemas, match="null cannot be read as string"):
        _load_one(tmp_path, "ToolCallCompleted", [_current("ToolCallCompleted"), v2])


def test_loader_refuses_a_version_gap(tmp_path: Path) -> None:
    (tmp_path / "AgentStarted").mkdir()
    for v in (1, 3):
        schema = _current("AgentStarted")
        schema["fields"].append({"name": f"x{v}", "type": ["null", "string"], "default": None})
        (tmp_path / "AgentStarted" / f"v{v}.avsc").write_text(json.dumps(schema))
    with pytest.raises(InvalidSchemas, match=r"versions \[2\] are missing"):
        load_schemas(tmp_path)


def test_loader_refuses_a_misnamed_record_or_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSchemas, match="declares 'aosk.events.AgentStarted'"):
        _load_one(tmp_path, "AgentResumed", [_current("AgentStarted")])
    shutil.rmtree(tmp_path / "AgentResumed")
    (tmp_path / "AgentStarted").mkdir()
    (tmp_path / "AgentStarted" / "latest.avsc").write_text(json.dumps(_current("AgentStarted")))
    with pytest.raises(InvalidSchemas, match="named v<N>.avsc"):
        load_schemas(tmp_path)


def test_loader_refuses_invalid_json_and_invalid_avro(tmp_path: Path) -> None:
    (tmp_path / "AgentStarted").mkdir()
    (tmp_path / "AgentStarted" / "v1.avsc").write_text("{not json")
    with pytest.raises(InvalidSchemas, match="not readable JSON"):
        load_schemas(tmp_path)
    broken = _current("AgentStarted")
    broken["fields"][0]["type"] = "strng"
    (tmp_path / "AgentStarted" / "v1.avsc").write_text(json.dumps(broken))
    with pytest.raises(InvalidSchemas, match="not a valid Avro schema"):
        load_schemas(tmp_path)


def test_codec_refuses_a_class_that_differs_from_its_schema(tmp_path: Path) -> None:
    extra = _current("AgentStarted")
    extra["fields"].append({"name": "host", "type": ["null", "string"], "default": None})
    schemas = _load_one(tmp_path, "AgentStarted", [_current("AgentStarted"), extra])
    with pytest.raises(ValueError, match="differ from its schema"):
        Codec(schemas, {"AgentStarted": EVENT_TYPES["AgentStarted"]})


# --- the resolution rules themselves ------------------------------------------------------


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("int", "long"), ("int", "double"), ("long", "float"), ("float", "double"),
        ("string", "bytes"), ("bytes", "string"),
        ("string", ["null", "string"]),
        (["null", "int"], ["null", "long"]),
        ({"type": "array", "items": "int"}, {"type": "array", "items": "long"}),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, {"type": "enum", "name": "E", "symbols": ["a", "b"]}),
        ({"type": "enum", "name": "E", "symbols": ["a", "z"]},
         {"type": "enum", "name": "E", "symbols": ["a"], "default": "a"}),
        ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]},
         {"type": "record", "name": "R", "fields": [{"name": "b", "type": "int", "default": 0}]}),
    ],
)
def test_compatible_changes(writer: Any, reader: Any) -> None:
    assert incompatibilities(writer, reader) == []


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("long", "int"), ("double", "float"), ("string", "int"),
        (["null", "string"], "string"),
        ({"type": "map", "values": "long"}, {"type": "map", "values": "int"}),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, {"type": "enum", "name": "F", "symbols": ["a"]}),
        ({"type": "fixed", "name": "H", "size": 32}, {"type": "fixed", "name": "H", "size": 16}),
        ({"type": "record", "name": "R", "fields": []},
         {"type": "record", "name": "R", "fields": [{"name": "b", "type": "int"}]}),
    ],
)
def test_incompatible_changes(writer: Any, reader: Any) -> None:
    assert incompatibilities(writer, reader) != []


def test_named_type_defined_in_a_dropped_field_still_resolves() -> None:
    budgets = {"type": "record", "name": "B", "fields": [{"name": "n", "type": "long"}]}
    writer = {"type": "record", "name": "R", "fields": [
        {"name": "old", "type": budgets}, {"name": "new", "type": "B"}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "new", "type": budgets}]}
    assert incompatibilities(writer, reader) == []


# --- real evolutions ------------------------------------------------------------------------


def test_kernel_upgraded_v1_records_read_with_an_unknown_partition_count() -> None:
    """KernelUpgraded v2 adds ``partitions`` (int, default 0 = unknown): markers written
    before it decode with 0, so fold version 1 history folds exactly as it did."""
    from aosk.events import KernelUpgraded, decode, encode

    assert [sv.version for sv in SCHEMAS.versions["KernelUpgraded"]] == [1, 2]
    v1 = {"event_id": "00000000-0000-4000-8000-000000000001", "agent_id": "~p3", "tenant_id": "~kernel",
          "occurred_at": 7, "origin": "kernel", "correlation_id": None, "causation_id": None, "fold_version": 1}
    old = decode(_encode_with(SCHEMAS, "KernelUpgraded", 1, v1))
    assert type(old) is KernelUpgraded and (old.fold_version, old.partitions) == (1, 0)
    new = KernelUpgraded(**{**v1, "fold_version": 2}, partitions=12)
    data = encode(new)
    assert data[2:10] == SCHEMAS.current("KernelUpgraded").fingerprint
    assert decode(data) == new
