"""Canonical JSON: the one byte form of fold values.

The canonical form of a value is exactly what
``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False).encode("utf-8")`` produces for its plain form (dicts, lists, str, int,
float, None, bool). It is the same on every machine and every ``PYTHONHASHSEED``:
keys are sorted, there is no whitespace, strings are UTF-8 with only ``"``, ``\\`` and
control characters escaped, and floats use Python's shortest round-trip ``repr``
(correctly rounded IEEE 754, so identical across platforms). NaN and infinities never
occur (the fold rejects them) and ``-0.0`` is normalised to ``0.0`` on the way in.

The state encoder in ``aosk.kernel.state`` builds these bytes from cached pieces (so a
fold does not re-encode a whole window per event); ``canonical_json`` is the reference a
test compares it with.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _encode_basestring  # C-accelerated
from typing import Any

__all__ = ["canonical_json", "jstr", "jnum", "jopt_str", "jlist", "norm_float"]


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a plain value (the reference implementation)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def jstr(s: str) -> str:
    """A JSON string literal, as ``json.dumps(..., ensure_ascii=False)`` writes it."""
    return _encode_basestring(s)


def jnum(x: int | float) -> str:
    """A JSON number. ints as decimal, floats by shortest round-trip repr."""
    if type(x) is int:
        return str(x)
    return repr(float(x))


def jopt_str(s: str | None) -> str:
    return "null" if s is None else _encode_basestring(s)


def jlist(items: tuple[str, ...] | list[str]) -> str:
    """A JSON array of already-encoded JSON values."""
    return "[" + ",".join(items) + "]"


def norm_float(x: float) -> float:
    """Normalise a finite float for storage: an exact float, ``-0.0`` becomes ``0.0``."""
    return float(x) + 0.0
