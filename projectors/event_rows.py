"""Rows of the ``events`` projection (one per journal record, the event's body as JSON)
and their way back to a ``Record`` the fold can apply (pure; no database).

The row is built from the record's audit row (the same agent, tenant and event id
columns, already made storable) plus the event itself: ``payload`` is
``aosk.kernel.event_to_plain`` without ``"type"`` (bytes as hex). PostgreSQL's jsonb
refuses NUL characters, lone surrogates and non-finite numbers, which an event may carry
(the fold then rejects it): such a value is stored as ``{"~escaped": <its JSON>}``
(``"\\u0000"`` escapes), so folding the row back gives the journal's verdict; only a map
key with such characters is replaced (U+FFFD). An
undecodable record has ``event_type`` null and ``payload`` ``{"error": ..., "reason": ...}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from aosk.errors import DecodeError, Quarantined, Undecodable
from aosk.events import Event
from aosk.kernel import Record, event_from_plain, event_to_plain
from aosk.projectors.rows import storable

__all__ = ["EVENT_COLUMNS", "EVENT_TYPES", "event_row", "refused_event_row", "payload_json", "payload_of", "record_of"]

EVENT_COLUMNS: Final = (
    "agent_id", "tenant_id", "seq", "journal_partition", "journal_offset", "event_id", "event_type", "payload",
    "verdict", "reason", "broker_time",
)
EVENT_TYPES: Final = ("text", "text", "int8", "int4", "int8", "text", "text", "jsonb", "text", "text",
                      "timestamptz")
_PAYLOAD: Final = EVENT_COLUMNS.index("payload")


def _same(text: str) -> str:
    return text


ESCAPED: Final = "~escaped"
"""A value jsonb cannot hold is stored as ``{"~escaped": <its JSON with ASCII escapes>}``."""


def _needs_escape(s: str) -> bool:
    if "\x00" in s:
        return True
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _escaped(v: Any) -> Any:
    if isinstance(v, str):
        return {ESCAPED: json.dumps(v)} if _needs_escape(v) else v
    if isinstance(v, float) and not math.isfinite(v):
        return {ESCAPED: json.dumps(v)}
    if isinstance(v, dict):
        return {storable(k): _escaped(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_escaped(x) for x in v]
    return v


def _unescaped(v: Any) -> Any:
    if isinstance(v, dict):
        if len(v) == 1 and ESCAPED in v:
            return json.loads(v[ESCAPED])
        return {k: _unescaped(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unescaped(x) for x in v]
    return v


def payload_json(plain: dict[str, Any]) -> str:
    """``plain`` as JSON text that jsonb stores (see the module's docstring)."""
    try:
        text = json.dumps(plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\\u0000" not in text and (text.isascii() or not _needs_escape(text)):
            return text
    except ValueError:
        pass
    return json.dumps(_escaped(plain), ensure_ascii=False, separators=(",", ":"))


def _error_plain(error: DecodeError | None) -> dict[str, Any]:
    if isinstance(error, Quarantined):
        return {"error": "quarantined", "reason": error.reason, "fingerprint": error.fingerprint.hex(),
                "marker_offset": error.marker_offset}
    return {"error": "undecodable", "reason": str(getattr(error, "reason", error))}


_FLAT: Final = (float, int, str)


def _plain_fields(event: Event) -> dict[str, Any]:
    """``event_to_plain(event)`` without ``"type"``, faster for the common shapes: an
    Avro array has one item type, so a tuple whose first item is a float, int or str (an
    embedding, capabilities) is copied as a list without a call per item."""
    out: dict[str, Any] = {}
    slow = False
    for name in event.__dataclass_fields__:
        v = getattr(event, name)
        if type(v) is tuple:
            if v and type(v[0]) not in _FLAT:
                slow = True
                break
            out[name] = list(v)
        elif v is None or type(v) in _FLAT or type(v) is bool:
            out[name] = v
        elif type(v) is dict and all(type(x) in _FLAT for x in v.values()):
            out[name] = dict(v)
        else:
            slow = True
            break
    if slow:
        out = event_to_plain(event)
        del out["type"]
    return out


def event_row(audit: Sequence[Any], event: Event | None, error: DecodeError | None) -> tuple[Any, ...]:
    """The ``events`` row of the record whose audit row is ``audit`` (``AUDIT_COLUMNS``)."""
    if event is not None:
        plain = _plain_fields(event)
    else:
        plain = _error_plain(error)
    text = payload_json(plain)
    return (audit[2], audit[5], audit[3], audit[0], audit[1], audit[6], audit[7], Jsonb(text, dumps=_same),
            audit[9], audit[10], audit[4])


def refused_event_row(row: Sequence[Any], refusal: str) -> tuple[Any, ...]:
    """``row`` without its payload, which PostgreSQL refused: ``{"refused": <error>}``."""
    r = list(row)
    r[_PAYLOAD] = Jsonb(payload_json({"refused": refusal}), dumps=_same)
    return tuple(r)


_decode_json: Final = msgspec.json.Decoder().decode


def payload_of(text: str) -> dict[str, Any]:
    """A stored ``payload`` read as text (``payload::text``) back to ``record_of``'s
    argument: its JSON, unescaped only if something in it was escaped (most payloads
    have nothing to unescape, and walking an embedding's items costs more than parsing it).

    Parsed by msgspec (an embedding's 384 numbers ~5x faster than ``json.loads``), which
    gives the same values as ``json.loads`` (integers of any size exact, floats correctly
    rounded); what it refuses and ``json.loads`` reads (a number too large for a double,
    which ``json.loads`` makes infinite; a lone surrogate escape) is left to ``json.loads``.
    jsonb holds neither, so that is for text from elsewhere."""
    try:
        plain = _decode_json(text)
    except msgspec.DecodeError:
        plain = json.loads(text)
    return _unescaped(plain) if ESCAPED in text else plain


def record_of(key: str | None, partition: int, offset: int, event_type: str | None, payload: dict[str, Any],
              broker_ms: int, *, escaped: bool = True) -> Record:
    """The ``Record`` an ``events`` row stands for, as the fold sees it (``value`` is
    empty: the fold never reads it). ``key``: the record's key (the agent's id; None for a
    partition marker). ``escaped=False``: ``payload`` is already unescaped (``payload_of``)."""
    if event_type is None:
        if payload.get("error") == "quarantined":
            err: DecodeError = Quarantined(bytes.fromhex(payload["fingerprint"]), int(payload["marker_offset"]),
                                           str(payload["reason"]))
        else:
            err = Undecodable(str(payload.get("reason", payload)))
        return Record(key, partition, offset, broker_ms, error=err)
    plain = _unescaped(payload) if escaped else dict(payload)
    plain["type"] = event_type
    return Record(key, partition, offset, broker_ms, event=event_from_plain(plain))
