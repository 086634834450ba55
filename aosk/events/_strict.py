"""A strict reader for Avro binary bodies that accepts only canonical encodings.

It is the fast path of ``Codec.decode``: one pass over the bytes that both reads the
value and proves the bytes canonical, instead of reading with fastavro and encoding the
value again to compare (twice the work). It is deliberately one-sided: it either
returns the very value the reference path (fastavro read, re-encode, compare) would
return, or raises ``NotCanonical``, after which the caller runs the reference path.
So its verdicts on bad input never matter -- only that it never accepts bytes the
reference path refuses, and never returns a different value. Anything it is not sure
about (NaN payloads, ints beyond 32 bits, old schema versions needing resolution, a
schema shape it was not built for) is sent to the reference path rather than decided
here. ``tests/unit/test_codec_strict.py`` checks this differentially against the
reference implementation.

Canonical here means exactly what fastavro's writer (and Avro's Java encoder) produce:
minimal zigzag varints of at most 10 bytes within 64 bits, union and enum indexes in
range, each non-empty array/map in one positive block followed by 0,
distinct map keys, strict UTF-8, and nothing after the body.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct, unpack_from
from typing import Any, Final

__all__ = ["NotCanonical", "BodyReader", "compile_body_reader"]

_F64: Final = Struct("<d")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

Read = Callable[[bytes, int], tuple[Any, int]]
"""Reads one value at a position of a buffer: (value, position after it)."""
BodyReader = Callable[[bytes, int], dict[str, Any]]
"""Reads a whole record body from a position to the very end of the buffer."""


# Internal signals, not AoskErrors: neither leaves aosk.events (compile_body_reader
# catches Unsupported, the codec catches NotCanonical and runs its reference path).


class NotCanonical(Exception):
    """Internal: not provably the canonical encoding of a value: let the reference path judge."""


class Unsupported(Exception):
    """Internal: a schema shape this reader is not built for (the codec then always uses
    the reference path for that schema)."""


# --- leaves --------------------------------------------------------------------------------


def _long(b: bytes, p: int) -> tuple[int, int]:
    """The zigzag varint at ``p``; refuses overlong forms, more than 10 bytes and
    values beyond 64 bits (the forms fastavro's writer never produces)."""
    byte = b[p]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), p + 1
    n = byte & 0x7F
    shift = 7
    p += 1
    while True:
        byte = b[p]
        p += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise NotCanonical("varint longer than 10 bytes")
    if byte == 0 or n >> 64:
        raise NotCanonical("overlong varint")
    return (n >> 1) ^ -(n & 1), p


def _int(b: bytes, p: int) -> tuple[int, int]:
    # beyond 32 bits the reference path refuses the record (its own message)
    v, p = _long(b, p)
    if not _INT_MIN <= v <= _INT_MAX:
        raise NotCanonical("int beyond 32 bits")
    return v, p


def _end_of(b: bytes, p: int) -> tuple[int, int]:
    """(start, end) of the length-prefixed bytes at ``p``, within ``b``."""
    n = b[p]
    if n < 0x80:  # lengths up to 63: one byte, even (zigzag of a non-negative number)
        if n & 1:
            raise NotCanonical("negative length")
        end = p + 1 + (n >> 1)
        p += 1
    else:
        length, p = _long(b, p)
        if length < 0:
            raise NotCanonical("negative length")
        end = p + length
    if end > len(b):
        raise NotCanonical("length beyond the buffer")
    return p, end


def _string(b: bytes, p: int) -> tuple[str, int]:
    start, end = _end_of(b, p)
    return b[start:end].decode("utf-8"), end  # strict: invalid UTF-8 raises


def _bytes(b: bytes, p: int) -> tuple[bytes, int]:
    start, end = _end_of(b, p)
    return b[start:end], end


def _null(b: bytes, p: int) -> tuple[None, int]:
    return None, p


def _double(b: bytes, p: int) -> tuple[float, int]:
    (v,) = _F64.unpack_from(b, p)
    if v != v:
        raise NotCanonical("NaN")
    return v, p + 8


# No schema has a boolean or a lone float yet, so neither is read here (the differential
# test could not cover it): such a schema keeps the reference path, and
# test_the_one_pass_reader_covers_every_current_schema says so.
_PRIMITIVES: Final[dict[str, Read]] = {
    "null": _null,
    "int": _int,
    "long": _long,
    "double": _double,
    "bytes": _bytes,
    "string": _string,
}


# --- composites ----------------------------------------------------------------------------


def _block_count(b: bytes, p: int) -> tuple[int, int]:
    """The item count of an array/map: 0, or one positive block (then 0 must follow
    the items). Bounded by the bytes left, as every supported item takes one byte."""
    n, p = _long(b, p)
    if n < 0:
        raise NotCanonical("negative block count")
    if n > len(b) - p:
        raise NotCanonical("more items than bytes")
    return n, p


def _block_end(b: bytes, p: int) -> int:
    if b[p] != 0:
        raise NotCanonical("more than one block")
    return p + 1


def _enum(symbols: tuple[str, ...]) -> Read:
    count = len(symbols)

    def read(b: bytes, p: int) -> tuple[str, int]:
        i, p = _long(b, p)
        if not 0 <= i < count:
            raise NotCanonical("enum index out of range")
        return symbols[i], p

    return read


def _union(branches: tuple[Read, ...]) -> Read:
    count = len(branches)

    def read(b: bytes, p: int) -> tuple[Any, int]:
        i, p = _long(b, p)
        if not 0 <= i < count:
            raise NotCanonical("union index out of range")
        return branches[i](b, p)

    return read


def _float_array(b: bytes, p: int) -> tuple[list[float], int]:
    # the common embedding case: one unpack instead of a call per item
    n, p = _block_count(b, p)
    if n == 0:
        return [], p
    values = list(unpack_from(f"<{n}f", b, p))  # struct caches the compiled format
    total = sum(values)
    if total != total:  # some NaN (or inf - inf: a false alarm costs only the slow path)
        raise NotCanonical("NaN")
    return values, _block_end(b, p + 4 * n)


def _array(item: Read) -> Read:
    def read(b: bytes, p: int) -> tuple[list[Any], int]:
        n, p = _block_count(b, p)
        if n == 0:
            return [], p
        out = []
        for _ in range(n):
            v, p = item(b, p)
            out.append(v)
        return out, _block_end(b, p)

    return read


def _map(value: Read) -> Read:
    def read(b: bytes, p: int) -> tuple[dict[str, Any], int]:
        n, p = _block_count(b, p)
        if n == 0:
            return {}, p
        out = {}
        for _ in range(n):
            k, p = _string(b, p)
            out[k], p = value(b, p)
        if len(out) != n:
            raise NotCanonical("duplicate map keys")
        return out, _block_end(b, p)

    return read


# Field kinds the record loop reads inline (no call per field); the rest call a Read.
_STRING, _LONG, _OPT_STRING, _OTHER = range(4)


def _record(fields: tuple[tuple[str, int, Read], ...]) -> Read:
    string, long_, opt_string = _STRING, _LONG, _OPT_STRING  # cell loads, not global lookups

    def read(b: bytes, p: int) -> tuple[dict[str, Any], int]:
        size = len(b)
        rec: dict[str, Any] = {}
        for name, kind, other in fields:
            if kind == opt_string:
                tag = b[p]
                if tag == 0:
                    rec[name] = None
                    p += 1
                    continue
                if tag != 2:
                    raise NotCanonical("union index out of range")
                p += 1
                kind = string
            if kind == string:
                n = b[p]
                if n < 0x80 and not n & 1:  # a string of up to 63 bytes, inline
                    start = p + 1
                    p = start + (n >> 1)
                    if p > size:
                        raise NotCanonical("length beyond the buffer")
                    rec[name] = b[start:p].decode("utf-8")
                else:
                    rec[name], p = _string(b, p)
            elif kind == long_:
                n = b[p]
                if n < 0x80:
                    rec[name] = (n >> 1) ^ -(n & 1)
                    p += 1
                else:
                    rec[name], p = _long(b, p)
            else:
                rec[name], p = other(b, p)
        return rec, p

    return read


# --- compiling a fastavro-parsed schema ------------------------------------------------------


def _compile(schema: Any) -> Read:
    if isinstance(schema, list):
        return _union(tuple(_compile(s) for s in schema))
    if isinstance(schema, str):
        read = _PRIMITIVES.get(schema)
        if read is None:  # a reference to a named type defined elsewhere
            raise Unsupported(f"named type reference {schema!r}")
        return read
    kind = schema["type"]
    if not isinstance(kind, str):
        return _compile(kind)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "enum":
        return _enum(tuple(schema["symbols"]))
    if kind == "array":
        if schema["items"] == "float":
            return _float_array
        return _array(_nonempty(schema["items"]))
    if kind == "map":
        return _map(_nonempty(schema["values"]))
    if kind == "record":
        return _record(tuple((f["name"], *_field(f["type"])) for f in schema["fields"]))
    raise Unsupported(f"type {kind!r}")


def _nonempty(schema: Any) -> Read:
    """The reader of an array item or map value: each must take at least one byte,
    so a count is bounded by the bytes left (nothing big is allocated for garbage)."""
    if _kind_name(schema) in ("null", "record", "fixed"):
        raise Unsupported("array/map items that may take no bytes")
    return _compile(schema)


def _kind_name(schema: Any) -> str:
    if isinstance(schema, dict):
        kind = schema["type"]
        return kind if isinstance(kind, str) else _kind_name(kind)
    return "union" if isinstance(schema, list) else str(schema)


def _field(schema: Any) -> tuple[int, Read]:
    kind = _kind_name(schema)
    if kind == "string":
        return _STRING, _string
    if kind == "long":
        return _LONG, _long
    if kind == "union" and schema == ["null", "string"]:
        return _OPT_STRING, _string
    return _OTHER, _compile(schema)


def compile_body_reader(schema: Any) -> BodyReader | None:
    """A strict reader of record bodies of ``schema`` (fastavro-parsed), or None if the
    schema has a shape this module does not handle. The reader raises NotCanonical (or
    an IndexError, UnicodeDecodeError, struct.error on garbage) unless the bytes from
    ``start`` to the end are the canonical encoding of one record."""
    try:
        read = _compile(schema)
    except Unsupported:
        return None
    if _kind_name(schema) != "record":
        return None

    def body(b: bytes, start: int) -> dict[str, Any]:
        rec: dict[str, Any]  # a record schema reads into a dict (checked above)
        rec, end = read(b, start)
        if end != len(b):
            raise NotCanonical("trailing bytes")
        return rec

    return body
