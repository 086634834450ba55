"""Events as plain JSON values (golden journals, debugging, the CLI's ``--json``).

``{"type": <Avro record name>, <field>: <value>, ...}`` with bytes as hex and tuples as
lists. Not the journal's encoding (that is Avro, ``aosk.events``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import Any, Final

from aosk.events import EVENT_TYPES, Budgets, Event

__all__ = ["event_to_plain", "event_from_plain"]


def _to_plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    if isinstance(v, Budgets):
        return {f.name: getattr(v, f.name) for f in fields(v)}
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    return v


def event_to_plain(e: Event) -> dict[str, Any]:
    """``{"type": <name>, <field>: <value>, ...}``; bytes as hex, tuples as lists."""
    d: dict[str, Any] = {"type": type(e).__name__}
    for f in fields(e):
        d[f.name] = _to_plain(getattr(e, f.name))
    return d


def _from_plain(hint: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _from_plain(inner, v)
    if hint is bytes:
        return bytes.fromhex(v)
    if hint is Budgets:
        return Budgets(**v)
    if origin is tuple:
        return tuple(v)
    if origin is dict:
        return dict(v)
    if hint is float:
        return float(v)
    return v


_HINTS: Final = {name: typing.get_type_hints(cls) for name, cls in EVENT_TYPES.items()}


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """``_from_plain(hint, v)`` for a non-None ``v`` as one call decided once per field
    (None: ``v`` itself), so folding events read back from JSON does not inspect type
    hints per value."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) != 1:
            return partial(_from_plain, hint)  # _from_plain's own error, when such a value comes
        return _converter(inner[0])
    if hint is bytes:
        return bytes.fromhex
    if hint is Budgets:
        return lambda v: Budgets(**v)
    if origin is tuple:
        return tuple
    if origin is dict:
        return dict
    if hint is float:
        return float
    return None


_CONVERTERS: Final = {name: {k: _converter(h) for k, h in hints.items()} for name, hints in _HINTS.items()}


def event_from_plain(d: dict[str, Any]) -> Event:
    """Inverse of ``event_to_plain``."""
    name = d["type"]
    cls = EVENT_TYPES[name]
    convert = _CONVERTERS[name]
    kw = {}
    for k, v in d.items():
        if k == "type":
            continue
        c = convert[k]  # KeyError for a field the event does not have, as _from_plain's hints[k]
        kw[k] = v if c is None or v is None else c(v)
    return cls(**kw)


