"""Internal: what a handler sees (``Cx``) and returns (``Out``).

Both are named tuples, not frozen dataclasses: one of each is built per record, and a
tuple is built in C (a frozen dataclass sets every field through ``object.__setattr__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from aosk.kernel.params import FoldParams
from aosk.kernel.state import AgentState, ContextEntry
from aosk.kernel.verdict import Kind, Reason, Record

__all__ = ["Cx", "Out", "ok", "reject", "dup", "Handler"]

NO_CHANGES: Final[Mapping[str, Any]] = MappingProxyType({})
"""The ``changes`` of a rejection or a duplicate (read-only, so it can be shared)."""


class Cx(NamedTuple):
    """The record being folded and the rules in force."""

    record: Record
    key: str
    seq: int
    """The seq this record takes."""
    params: FoldParams


class Out(NamedTuple):
    """A handler's decision. ``changes`` are replacements of ``AgentState`` fields,
    applied only when accepted; ``consume`` is (tokens, tool_calls, steps) to count.
    Derived events are not here: ``derive.derived_for`` computes them from the verdict."""

    kind: str
    reason: str
    message: str
    changes: Mapping[str, Any] = NO_CHANGES
    paged_out: tuple[ContextEntry, ...] = ()
    consume: tuple[int, int, int] | None = None


def ok(
    message: str = "",
    *,
    paged_out: tuple[ContextEntry, ...] = (),
    consume: tuple[int, int, int] | None = None,
    **changes: Any,
) -> Out:
    return Out(Kind.ACCEPTED, Reason.OK, message, changes, paged_out, consume)


def reject(reason: str, message: str) -> Out:
    return Out(Kind.REJECTED, reason, message)


def dup(reason: str, message: str) -> Out:
    return Out(Kind.DUPLICATE, reason, message)


# A handler: (context, state before, event) -> decision.
Handler = Callable[[Cx, AgentState, Any], Out]
