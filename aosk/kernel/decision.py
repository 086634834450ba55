"""What a handler sees (``FoldContext``) and what it decides (``Decision``).

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

__all__ = ["FoldContext", "Decision", "ok", "reject", "dup", "Handler"]

NO_CHANGES: Final[Mapping[str, Any]] = MappingProxyType({})
"""The ``changes`` of a rejection or a duplicate (read-only, so it can be shared)."""

# Enum members bound once: ``Kind.ACCEPTED`` is a descriptor call (~0.2 us) on Python 3.11,
# and every record builds a decision.
_ACCEPTED: Final = Kind.ACCEPTED
_REJECTED: Final = Kind.REJECTED
_DUPLICATE: Final = Kind.DUPLICATE
_OK: Final = Reason.OK


class FoldContext(NamedTuple):
    """The record being folded and the rules in force."""

    record: Record
    key: str
    seq: int
    """The seq this record takes."""
    params: FoldParams


class Decision(NamedTuple):
    """A handler's decision. ``changes`` are replacements of ``AgentState`` fields,
    applied only when accepted; ``consume`` is (tokens, tool_calls, steps) to count.
    Derived events are not here: ``derive.derived_for`` computes them from the verdict."""

    kind: Kind
    reason: Reason
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
) -> Decision:
    return Decision(_ACCEPTED, _OK, message, changes, paged_out, consume)


def reject(reason: Reason, message: str) -> Decision:
    return Decision(_REJECTED, reason, message)


def dup(reason: Reason, message: str) -> Decision:
    return Decision(_DUPLICATE, reason, message)


Handler = Callable[[FoldContext, AgentState, Any], Decision]
"""A handler: (context, state before, event) -> decision."""
