"""Payload hygiene: what the fold refuses before anything reaches a state or PostgreSQL.

Every field of every event is checked against its declared type (the codec guarantees
it for decoded records; in-process callers may not), every string for NUL characters
and lone surrogates (PostgreSQL text and UTF-8 refuse both), every float for NaN and
infinities, and every int for the Avro long range. Type-specific limits (sizes, id
shapes, JSON arguments, embedding dimension, from fold version 3 on an all-zero
embedding) are checked by the event's own handler with the helpers below. A failure is
a rejection with reason ``invalid_payload``.
"""

from __future__ import annotations

import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aosk.events import EVENT_TYPES, Budgets, Event
from aosk.kernel.canonical import jstr as _encode_basestring
from aosk.kernel.params import FoldParams

__all__ = [
    "check_fields",
    "check_uuid",
    "check_name",
    "check_agent_id",
    "check_text",
    "check_json",
    "check_embedding",
    "check_importance",
    "check_metadata",
    "check_budgets",
    "check_nonneg",
    "utf8_len",
]

_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

Checker = Callable[[Any], str | None]


def _str_problem(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL character"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (lone surrogate)"
    return None


def _c_str(v: Any) -> str | None:
    if type(v) is not str:
        return "must be a string"
    return _str_problem(v)


def _c_int(v: Any) -> str | None:
    if type(v) is not int:
        return "must be an integer"
    if not _LONG_MIN <= v <= _LONG_MAX:
        return "is out of the 64-bit range"
    return None


def _c_float(v: Any) -> str | None:
    if type(v) is not float and type(v) is not int:
        return "must be a number"
    if not math.isfinite(v):
        return "must be finite (no NaN or infinity)"
    return None


def _c_bytes(v: Any) -> str | None:
    return None if type(v) is bytes else "must be bytes"


def _c_str_tuple(v: Any) -> str | None:
    if type(v) is not tuple:
        return "must be a tuple of strings"
    for x in v:
        p = _c_str(x)
        if p:
            return "has an element that " + p
    return None


def _c_float_tuple(v: Any) -> str | None:
    if type(v) is not tuple:
        return "must be a tuple of numbers"
    try:
        if all(map(math.isfinite, v)):  # C-level loop: an embedding is 384 of these
            return None
    except TypeError:
        return "must hold numbers only"
    return "must hold finite numbers only (no NaN or infinity)"


def _c_str_map(v: Any) -> str | None:
    if type(v) is not dict:
        return "must be a dict of strings"
    for k, x in v.items():
        p = _c_str(k) or _c_str(x)
        if p:
            return "has an entry that " + p
    return None


def _c_budgets(v: Any) -> str | None:
    if type(v) is not Budgets:
        return "must be Budgets"
    for x in (v.max_tokens, v.max_tool_calls, v.max_steps, v.context_window_tokens):
        p = _c_int(x)
        if p:
            return "has a limit that " + p
    return None


def _optional(c: Checker) -> Checker:
    def check(v: Any) -> str | None:
        return None if v is None else c(v)

    return check


def _checker_for(hint: Any) -> Checker:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        assert len(args) == 1, hint
        return _optional(_checker_for(args[0]))
    if hint is str:
        return _c_str
    if hint is int:
        return _c_int
    if hint is float:
        return _c_float
    if hint is bytes:
        return _c_bytes
    if hint is Budgets:
        return _c_budgets
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(hint)
        return _c_str_tuple if elem is str else _c_float_tuple
    if origin is dict:
        return _c_str_map
    raise TypeError(f"no hygiene checker for {hint!r}")  # pragma: no cover


def _tuple_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """``attrgetter(*names)`` that always returns a tuple (attrgetter of one name does not)."""
    if len(names) == 1:
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    if not names:
        return lambda obj: ()
    return operator.attrgetter(*names)


@dataclass(frozen=True, slots=True)
class _Spec:
    """How the fields of one event type are checked.

    ``checks`` is the rule: every field's checker, in field order, so the first problem
    is the one reported. Nearly every event is clean, so ``check_fields`` first runs
    ``clean``, which can only say "clean": the ``str`` and ``int`` fields (most of every
    event) are tested inline, without a checker call per field; the other fields go
    through their own checker. Anything ``clean`` does not pass is judged again by
    ``checks``, which names the problem.
    """

    checks: tuple[tuple[str, Checker], ...]
    strings: Callable[[Any], tuple[Any, ...]]
    """The values of the ``str`` fields."""
    optional_strings: Callable[[Any], tuple[Any, ...]]
    """The values of the ``str | None`` fields."""
    ints: Callable[[Any], tuple[Any, ...]]
    """The values of the ``int`` fields."""
    rest: tuple[tuple[str, Checker], ...]

    def clean(self, event: Event) -> bool:
        """True only if every check in ``checks`` passes (False: maybe not, ask them)."""
        for v in self.strings(event):
            if type(v) is not str or "\x00" in v or not (v.isascii() or _str_problem(v) is None):
                return False
        for v in self.optional_strings(event):
            if v is not None and (type(v) is not str or "\x00" in v or not (v.isascii() or _str_problem(v) is None)):
                return False
        for v in self.ints(event):
            if type(v) is not int or not _LONG_MIN <= v <= _LONG_MAX:
                return False
        for name, check in self.rest:
            if check(getattr(event, name)) is not None:
                return False
        return True


def _spec(cls: type[Event]) -> _Spec:
    hints = {name: h for name, h in typing.get_type_hints(cls).items() if not name.startswith("_")}
    strings = tuple(name for name, h in hints.items() if h is str)
    optional = tuple(name for name, h in hints.items() if h == str | None)
    ints = tuple(name for name, h in hints.items() if h is int)
    inline = {*strings, *optional, *ints}
    return _Spec(
        checks=tuple((name, _checker_for(h)) for name, h in hints.items()),
        strings=_tuple_getter(strings),
        optional_strings=_tuple_getter(optional),
        ints=_tuple_getter(ints),
        rest=tuple((name, _checker_for(h)) for name, h in hints.items() if name not in inline),
    )


_SPECS: Final[dict[type[Event], _Spec]] = {cls: _spec(cls) for cls in EVENT_TYPES.values()}


def check_fields(event: Event) -> str | None:
    """The first generic problem of ``event`` as ``"field: problem"``, or None."""
    spec = _SPECS.get(type(event))
    if spec is None:
        return f"{type(event).__name__} is not a journal event type"
    if spec.clean(event):
        return None
    for name, check in spec.checks:
        p = check(getattr(event, name))
        if p:
            return f"{name} {p}"
    return None


# --- specific checks (each returns a problem or None) -----------------------------------


def utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def check_uuid(name: str, s: str) -> str | None:
    if not _UUID.fullmatch(s):
        return f"{name} {s[:64]!r} is not a canonical lower-case UUID"
    return None


def check_name(name: str, s: str, p: FoldParams) -> str | None:
    """Ids, names, tools, roles...: 1..max_name_bytes UTF-8 bytes, no control characters."""
    if not s:
        return f"{name} must not be empty"
    if utf8_len(s) > p.max_name_bytes:
        return f"{name} is longer than {p.max_name_bytes} bytes"
    if _CONTROL.search(s):
        return f"{name} contains a control character"
    return None


def check_agent_id(name: str, s: str, p: FoldParams) -> str | None:
    problem = check_name(name, s, p)
    if problem:
        return problem
    if s.startswith("~"):
        return f"{name} {s!r} starts with '~' (reserved for partition pseudo-agents)"
    return None


def check_text(name: str, s: str, limit: int) -> str | None:
    if utf8_len(s) > limit:
        return f"{name} is longer than {limit} bytes"
    return None


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def check_json(name: str, s: str, p: FoldParams) -> str | None:
    if utf8_len(s) > p.max_text_bytes:
        return f"{name} is longer than {p.max_text_bytes} bytes"
    try:
        json.loads(s, parse_constant=_no_constants)
    except ValueError as e:
        return f"{name} is not JSON text ({e})"
    return None


def check_embedding(name: str, emb: tuple[float, ...], p: FoldParams) -> str | None:
    """The dimension, and from fold version 3 on (``rejects_zero_embedding``) at least
    one non-zero component. NaN and infinities never get here (``check_fields``)."""
    if len(emb) != p.embedding_dim:
        return f"{name} has dimension {len(emb)}, this cluster's is {p.embedding_dim}"
    if p.rejects_zero_embedding and not any(emb):  # C-level loop; 0.0 and -0.0 are both false
        return (f"all-zero embedding: cosine distance is undefined ({name} has no non-zero component, pgvector "
                "would return NaN distances for it); embed the text again, or store the memory without an embedding")
    return None


def check_importance(name: str, x: float) -> str | None:
    if not 0.0 <= x <= 1.0:
        return f"{name} {x!r} is outside [0, 1]"
    return None


def check_nonneg(name: str, x: int) -> str | None:
    if x < 0:
        return f"{name} must be >= 0"
    return None


def check_metadata(name: str, md: dict[str, str], p: FoldParams) -> str | None:
    if len(md) > p.max_metadata_entries:
        return f"{name} has more than {p.max_metadata_entries} entries"
    for k, v in md.items():
        problem = check_name(f"{name} key", k, p)
        if problem:
            return problem
        if len(_encode_basestring(v).encode("utf-8")) - 2 > p.max_metadata_value_bytes:
            return f"{name}[{k!r}] is longer than {p.max_metadata_value_bytes} bytes (JSON-escaped)"
    return None


def check_budgets(name: str, b: Budgets) -> str | None:
    for field in ("max_tokens", "max_tool_calls", "max_steps", "context_window_tokens"):
        if getattr(b, field) < 1:
            return f"{name}.{field} must be >= 1"
    return None
