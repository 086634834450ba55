"""Hypothesis strategies derived from the Avro schemas themselves.

Why from the schemas: a new event type or field is covered by the round-trip, fuzz and
evolution tests without editing them. Values span each Avro type's full range (64-bit
longs, 32-bit ints, infinities, NUL and astral characters, empty arrays and maps);
``float`` fields get float32-representable values because Avro stores 4 bytes.
NaN is left out (NaN != NaN would break equality) and tested on its own.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from aosk.events import EVENT_TYPES, SCHEMAS, Budgets, Event, Transition

NESTED: dict[str, type] = {"Budgets": Budgets}
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def datum(schema: Any, *, python: bool) -> st.SearchStrategy[Any]:
    """Values of ``schema``: codec-side Python (tuples, dataclasses) if ``python``,
    else the dict/list form fastavro writes (for encoding with an old version)."""
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        return datum(schema["type"], python=python)
    kind = _kind(schema)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return INT32
    if kind == "long":
        return INT64
    if kind == "float":
        return st.floats(width=32, allow_nan=False)
    if kind == "double":
        return st.floats(allow_nan=False)
    if kind == "string":
        return st.text(max_size=40)
    if kind == "bytes":
        return st.binary(max_size=64)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "union":
        return st.one_of([datum(b, python=python) for b in schema])
    if kind == "array":
        items = st.lists(datum(schema["items"], python=python), max_size=6)
        return items.map(tuple) if python else items
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), datum(schema["values"], python=python), max_size=4)
    if kind == "record":
        fields = {f["name"]: datum(f["type"], python=python) for f in schema["fields"]}
        cls = NESTED.get(schema["name"].rpartition(".")[2])
        if python and cls is not None:
            return st.builds(cls, **fields)
        return st.fixed_dictionaries(fields)
    raise NotImplementedError(f"no strategy for Avro type {kind!r}")


def event_of(name: str) -> st.SearchStrategy[Event]:
    """Events of type ``name`` (current schema)."""
    schema = SCHEMAS.current(name).declared
    fields = {f["name"]: datum(f["type"], python=True) for f in schema["fields"]}
    return st.builds(EVENT_TYPES[name], **fields)


def any_event() -> st.SearchStrategy[Event]:
    return st.one_of([event_of(name) for name in EVENT_TYPES])


def transitions() -> st.SearchStrategy[Transition]:
    schema = SCHEMAS.current("Transition").declared
    return st.builds(Transition, **{f["name"]: datum(f["type"], python=True) for f in schema["fields"]})


def example_events() -> list[Event]:
    """One small, fixed event of every type (for fuzzing seeds and quick checks)."""
    out: list[Event] = []
    for i, (name, cls) in enumerate(sorted(EVENT_TYPES.items())):
        schema = SCHEMAS.current(name).declared
        values = {f["name"]: _fixed(f["type"], i) for f in schema["fields"]}
        out.append(cls(**values))
    return out


_FIXED_LEAVES = {"null": None, "float": 0.5, "double": 0.25}


def _fixed(schema: Any, i: int) -> Any:
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        return _fixed(schema["type"], i)
    kind = _kind(schema)
    if kind in _FIXED_LEAVES:
        return _FIXED_LEAVES[kind]
    if kind == "int":
        return 100 + i
    if kind == "long":
        return 1_764_057_600_000_000 + i
    if kind == "string":
        return f"s{i}-\u00e9"
    if kind == "bytes":
        return bytes([i, 255, 0])
    if kind == "enum":
        return schema["symbols"][i % len(schema["symbols"])]
    if kind == "union":
        return _fixed(next(b for b in schema if b != "null"), i)
    if kind == "array":
        return tuple(_fixed(schema["items"], i) for _ in range(2))
    if kind == "map":
        return {"k": "v", f"k{i}": ""}
    if kind == "record":
        return NESTED[schema["name"].rpartition(".")[2]](
            **{f["name"]: _fixed(f["type"], i) for f in schema["fields"]}
        )
    raise NotImplementedError(kind)
