"""Avro single-object encoding of events and transitions (fastavro underneath).

Wire format (Avro specification, "Single object encoding"): ``C3 01``, the writer
schema's 8-byte little-endian CRC-64-AVRO fingerprint, then the Avro binary body.

Decoding is strict on purpose, because the fold must turn the same bytes into the same
event (or the same rejection) on every machine, in live processing and in replay:

- Only ``Undecodable`` and ``UnknownFingerprint`` ever escape ``decode``. Any failure
  inside fastavro (EOF, bad UTF-8, index errors, ...) becomes ``Undecodable``.
- A body is accepted only in its canonical encoding: after reading, the value is
  encoded again with the writer schema and must give back exactly the input bytes.
  That rejects what fastavro would otherwise accept leniently and inconsistently
  across builds: negative enum/union indexes (Python's ``symbols[-1]`` would turn
  garbage into ``origin="kernel"``), varints longer than 10 bytes (undefined shifts
  in the C reader), overlong varints, negative array block counts, duplicate map keys.
  Avro's Java encoder and fastavro both write canonical bodies, so nothing they
  produce is refused. As a consequence ``encode(decode(b)) == b`` for accepted bytes.
- Trailing bytes after the body are refused: a record value holds one datum.
- Avro ``int`` fields must fit in 32 bits (fastavro does not check either way).
- Huge length prefixes cannot allocate: fastavro reads from ``BytesIO``, whose ``read``
  is clamped to what is left, and every array/map item consumes at least one byte.

Records written with an older schema version are resolved into the current version
(fastavro reader schema), so the fold only ever sees current shapes.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from io import BytesIO
from itertools import repeat
from operator import attrgetter, call
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from fastavro import schemaless_reader, schemaless_writer

from aosk.errors import EventRejected, Undecodable, UnknownFingerprint
from aosk.events._schemas import SchemaSet, SchemaVersion
from aosk.events._strict import BodyReader, compile_body_reader
from aosk.events.types import Budgets

__all__ = ["MAGIC", "HEADER_SIZE", "Codec"]

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = 10  # magic + 8-byte fingerprint
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_ADDRESS: Final = re.compile(r" at 0x[0-9a-fA-F]+")
_LEAVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string", "enum", "fixed"})

T = TypeVar("T")
_Convert = Callable[[Any], Any]


def _kind(schema: Any) -> str:
    """Avro type name of a fastavro-parsed schema node."""
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _non_null_branch(union: list[Any], where: str) -> Any:
    """The T of a ``["null", T]`` union, the only union shape the schemas use."""
    others = [b for b in union if b != "null"]
    if len(union) != 2 or len(others) != 1:
        raise ValueError(f"{where}: only [\"null\", T] unions are supported, got {union}")
    return others[0]


def _branch_name(schema: Any) -> str:
    """The name fastavro's tuple notation ``(name, value)`` uses for a union branch."""
    kind = _kind(schema)
    return str(schema["name"]) if kind in ("record", "enum", "fixed") else kind


def _tag_unions(schema: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """For a record schema: a function that rewrites its top-level non-null union values
    as ``(branch, value)``, the form ``_Shape.to_avro`` produces (None: no unions)."""
    tags = [
        (f["name"], _branch_name(_non_null_branch(f["type"], f["name"])))
        for f in schema["fields"]
        if isinstance(f["type"], list)
    ]
    if not tags:
        return None

    def tag(record: dict[str, Any]) -> dict[str, Any]:
        tagged = dict(record)
        for name, branch in tags:
            if tagged[name] is not None:
                tagged[name] = (branch, tagged[name])
        return tagged

    return tag


def _int_checker(schema: Any, where: str) -> Callable[[Any], bool] | None:
    """A predicate that every Avro ``int`` inside ``schema`` fits in 32 bits (None if
    the schema holds no int). Runs on the dict form fastavro reads and writes."""
    kind = _kind(schema)
    if kind == "int":
        return lambda v: _INT_MIN <= v <= _INT_MAX
    if kind == "union":
        inner = _int_checker(_non_null_branch(schema, where), where)
        if inner is None:
            return None
        return lambda v: v is None or inner(v)
    if kind == "array":
        item = _int_checker(schema["items"], where)
        return None if item is None else (lambda v: all(item(x) for x in v))
    if kind == "map":
        value = _int_checker(schema["values"], where)
        return None if value is None else (lambda v: all(value(x) for x in v.values()))
    if kind == "record":
        checks = [
            (f["name"], c)
            for f in schema["fields"]
            if (c := _int_checker(f["type"], f"{where}.{f['name']}")) is not None
        ]
        if not checks:
            return None
        return lambda v: all(c(v[name]) for name, c in checks)
    return None


class _Shape(Generic[T]):
    """Converts between one class and the dict form of its current Avro record.

    Python side: arrays are tuples, nested records are dataclasses; fastavro side:
    lists and dicts. Converters exist only for fields that need one, so the common
    case is a plain ``cls(**record)``.
    """

    def __init__(self, cls: type[T], schema: Any, nested: Mapping[str, type[Any]]) -> None:
        self.cls = cls
        self.names = tuple(f["name"] for f in schema["fields"])
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass; every Avro record maps to one")
        declared = tuple(f.name for f in dataclass_fields(cls))
        if declared != self.names:
            raise ValueError(
                f"class {cls.__name__} fields {declared} differ from its schema {self.names}"
            )
        self._getter = attrgetter(*self.names)
        to_py: list[tuple[str, _Convert]] = []
        to_avro: list[tuple[str, _Convert]] = []
        for f in schema["fields"]:
            pair = self._converters(f["type"], nested, f"{cls.__name__}.{f['name']}")
            if pair is not None:
                to_py.append((f["name"], pair[0]))
                to_avro.append((f["name"], pair[1]))
        self._to_py = tuple(to_py)
        self._to_avro = tuple(to_avro)
        self._writes = _slot_writers(cls)

    @classmethod
    def _converters(
        cls, schema: Any, nested: Mapping[str, type[Any]], where: str
    ) -> tuple[_Convert, _Convert] | None:
        kind = _kind(schema)
        if kind == "array":
            if _kind(schema["items"]) == "float":
                # fastavro's array.array path skips per-item dispatch: 1.6x faster for
                # embeddings, same bytes (out-of-range values become inf either way)
                return tuple, _float_array
            return tuple, _identity  # fastavro writes any sequence; reads lists
        if kind == "union":
            branch = _non_null_branch(schema, where)
            tag = _branch_name(branch)
            inner = cls._converters(branch, nested, where)
            py, avro = inner if inner is not None else (_identity, _identity)
            # Written as (branch, value): fastavro then takes that branch instead of
            # validating the value against each branch (768 floats: 3x faster). A
            # wrongly typed value still fails: it is written as the tagged branch.
            to_py = None if inner is None else (lambda v: None if v is None else py(v))
            return to_py or _identity, (lambda v: None if v is None else (tag, avro(v)))
        if kind == "record":
            record = schema if isinstance(schema, dict) and "fields" in schema else schema["type"]
            name = record["name"]
            short = name.rpartition(".")[2]
            nested_cls = nested.get(short)
            if nested_cls is None:
                raise ValueError(f"{where}: no class for nested record {name}")
            shape = _Shape(nested_cls, record, nested)
            return shape.to_python, shape.to_avro
        if kind == "map":
            value_kind = _kind(schema["values"])
            if value_kind in ("array", "record", "union", "map"):
                raise ValueError(f"{where}: maps of {value_kind} are not supported")
            return None
        if kind in _LEAVES:
            return None
        raise ValueError(
            f"{where}: type {kind!r} is not supported here (a named type referenced "
            "twice in one schema needs a converter: inline it or extend _Shape)"
        )

    def to_avro(self, obj: Any) -> dict[str, Any]:
        record = dict(zip(self.names, self._getter(obj), strict=True)) if len(self.names) > 1 else {
            self.names[0]: self._getter(obj)
        }
        for name, convert in self._to_avro:
            record[name] = convert(record[name])
        return record

    def to_python(self, record: dict[str, Any]) -> T:
        for name, convert in self._to_py:
            record[name] = convert(record[name])
        return self.cls(**record)

    def from_strict(self, record: dict[str, Any]) -> T:
        """``to_python`` for a record the one-pass reader returned, which holds exactly
        the schema's fields in schema order (the class's field order, checked above).

        Skips the keyword parsing of ``cls(**record)`` and the generated ``__init__``'s
        ``object.__setattr__`` per field (about 1 us of a 6 us decode): the slots are
        written through their member descriptors, in the same order with the same
        values, so the object is the one ``__init__`` would build (see
        ``_slot_writers`` for which classes qualify; others take ``to_python``).
        """
        writes = self._writes
        if writes is None:
            return self.to_python(record)
        for name, convert in self._to_py:
            record[name] = convert(record[name])
        obj = _new(self.cls)
        # Every setter returns None, so any() runs them all; the loop stays in C (zip with
        # strict= would parse a keyword per call, for every record decoded).
        any(map(call, writes, repeat(obj), record.values()))
        return obj


def _describe(e: Exception) -> str:
    """An exception as text for an Undecodable reason. fastavro names the stream in some
    messages (``cannot read double from <_io.BytesIO object at 0x7f...>``); the address
    is dropped because the reason ends up in verdicts and audit rows, which must be the
    same on every machine and in every rebuild."""
    return f"{type(e).__name__}: {_ADDRESS.sub('', str(e))}"


def _identity(v: Any) -> Any:
    return v


_new: Final = object.__new__


def _slot_writers(cls: type[Any]) -> tuple[Callable[[object, Any], None], ...] | None:
    """The member-descriptor setters of ``cls``'s fields in field order, when writing
    them is all its ``__init__`` does: a slotted dataclass whose fields are all init
    fields, with no ``__post_init__`` (and no hand-written ``__init__``: none here has
    one) -- None otherwise. Frozen classes are the reason this exists (their
    ``__init__`` pays an ``object.__setattr__`` per field); ``test_codec_strict``
    checks every event class qualifies and builds the very object ``cls(**record)``
    does."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        return None
    params = cls.__dataclass_params__  # type: ignore[attr-defined]  # set by @dataclass; typeshed omits it
    if hasattr(cls, "__post_init__") or not params.init:
        return None
    fields = dataclass_fields(cls)
    if not all(f.init for f in fields):
        return None
    return tuple(getattr(cls, f.name).__set__ for f in fields)


def _float_array(v: Any) -> array[float]:
    return array("f", v)


class _Reader:
    """How to read one schema version: its writer schema, and whether it needs
    resolution into the current version."""

    __slots__ = ("version", "current", "shape", "int_ok", "tag", "strict")

    def __init__(self, version: SchemaVersion, current: SchemaVersion, shape: _Shape[Any]) -> None:
        self.version = version
        self.current = current if current is not version else None
        self.shape = shape
        self.int_ok = _int_checker(current.parsed, version.name)
        self.tag = _tag_unions(version.parsed)
        # Only current versions get the one-pass reader: older ones need resolution,
        # which stays with fastavro (they are rare in a journal).
        self.strict: BodyReader | None = compile_body_reader(version.parsed) if self.current is None else None


class Codec:
    """Encodes and decodes one family of records (events, or transitions) with a
    schema set. Immutable after construction; build it once and share it."""

    def __init__(
        self,
        schemas: SchemaSet,
        classes: Mapping[str, type[Any]],
        *,
        nested: Mapping[str, type[Any]] = MappingProxyType({"Budgets": Budgets}),
        family: str = "event",
    ) -> None:
        self._family = family
        self._writers: dict[type[Any], tuple[bytes, Any, _Shape[Any], Callable[[Any], bool] | None]] = {}
        readers: dict[bytes, _Reader] = {}
        for name, cls in classes.items():
            if name not in schemas.versions:
                raise ValueError(f"no schema for {family} type {name} in schemas/{name}/")
            current = schemas.current(name)
            shape = _Shape(cls, current.parsed, nested)
            header = MAGIC + current.fingerprint
            self._writers[cls] = (header, current.parsed, shape, _int_checker(current.parsed, name))
            for sv in schemas.versions[name]:
                readers[sv.fingerprint] = _Reader(sv, current, shape)
        self._readers = MappingProxyType(readers)
        self._foreign = MappingProxyType(
            {fp: sv for fp, sv in schemas.by_fingerprint.items() if fp not in readers}
        )

    def encode(self, obj: Any) -> bytes:
        """Single-object encoding of ``obj`` with its type's current schema.

        Raises EventRejected when the value does not fit the schema (wrong type, None
        for a required field, an int beyond 32 bits, an unknown enum symbol).
        """
        writer = self._writers.get(type(obj))
        if writer is None:
            raise EventRejected(
                f"{type(obj).__name__} has no schema among the {self._family} types"
            )
        header, schema, shape, int_ok = writer
        try:
            record = shape.to_avro(obj)
            if int_ok is not None and not int_ok(record):
                raise ValueError("an Avro int field is outside the 32-bit range")
            buf = BytesIO()
            buf.write(header)
            schemaless_writer(buf, schema, record)
        except Exception as e:  # fastavro signals a misfit with many exception types
            raise EventRejected(
                f"{type(obj).__name__} does not fit its Avro schema: {type(e).__name__}: {e}"
            ) from e
        return buf.getvalue()

    def decode(self, data: bytes | bytearray | memoryview | None) -> Any:
        """The object single-object encoded in ``data``, in its current shape.

        Raises only Undecodable (deterministic: the same bytes fail the same way
        everywhere) and UnknownFingerprint (a schema this process does not have).
        """
        if data is None:
            raise Undecodable("record has no value")
        if not isinstance(data, bytes):
            try:
                data = bytes(data)
            except Exception as e:
                raise Undecodable(f"not bytes but {type(data).__name__}") from e
        if len(data) < HEADER_SIZE:
            raise Undecodable(
                f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte single-object header"
            )
        if data[:2] != MAGIC:
            raise Undecodable(
                f"no single-object marker C3 01 (starts with {data[:2].hex()}); "
                "not an AOSK Avro record"
            )
        fingerprint = data[2:HEADER_SIZE]
        reader = self._readers.get(fingerprint)
        if reader is None:
            foreign = self._foreign.get(fingerprint)
            if foreign is not None:
                raise Undecodable(
                    f"written with schema {foreign.name} v{foreign.version}, "
                    f"not one of the {self._family} types"
                )
            raise UnknownFingerprint(fingerprint)
        return self._read(reader, data)

    def _read(self, reader: _Reader, data: bytes) -> Any:
        strict = reader.strict
        if strict is not None:
            try:
                record = strict(data, HEADER_SIZE)
            except Exception:  # noqa: BLE001 - not provably canonical: the reference path judges
                pass           # (and words the Undecodable exactly as it always has)
            else:
                return self._to_python(reader, record, trusted=True)
        return self._read_reference(reader, data)

    def _read_reference(self, reader: _Reader, data: bytes) -> Any:
        """fastavro read, re-encode and compare: the definition of what is accepted.
        ``_strict`` returns the same values for the bytes it accepts, in one pass."""
        sv = reader.version
        what = f"{sv.name} v{sv.version}"
        fo = BytesIO(data)
        fo.seek(HEADER_SIZE)
        try:
            record: Any = schemaless_reader(fo, sv.parsed, None)
            end = fo.tell()
            again = BytesIO()
            again.write(data[:HEADER_SIZE])
            tagged = record if reader.tag is None else reader.tag(record)
            schemaless_writer(again, sv.parsed, tagged)
            canonical = again.getvalue()
        except Exception as e:  # fastavro fails on corrupt bodies with many types
            raise Undecodable(f"{what}: body does not decode: {_describe(e)}") from e
        if end != len(data):
            raise Undecodable(f"{what}: {len(data) - end} trailing bytes after the body")
        if canonical != data:
            raise Undecodable(f"{what}: body is not in canonical Avro binary encoding")
        if reader.current is not None:
            fo.seek(HEADER_SIZE)
            try:
                record = schemaless_reader(fo, sv.parsed, reader.current.parsed)
            except Exception as e:
                raise Undecodable(
                    f"{what}: cannot be resolved into v{reader.current.version}: {_describe(e)}"
                ) from e
        if reader.int_ok is not None and not reader.int_ok(record):
            raise Undecodable(f"{what}: an Avro int field is outside the 32-bit range")
        return self._to_python(reader, record)

    @staticmethod
    def _to_python(reader: _Reader, record: dict[str, Any], *, trusted: bool = False) -> Any:
        """``trusted``: ``record`` comes from the one-pass reader (see ``from_strict``)."""
        try:
            shape = reader.shape
            return shape.from_strict(record) if trusted else shape.to_python(record)
        except Exception as e:  # the shape check at construction makes this unreachable
            sv = reader.version
            raise Undecodable(f"{sv.name} v{sv.version}: {type(e).__name__}: {e}") from e
