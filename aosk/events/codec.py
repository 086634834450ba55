"""The codec instances every AOSK process shares: events and transitions.

Built once at import from the installed ``aosk.schemas`` (an immutable constant, not
mutable global state). See ``_avro`` for the wire format and the decoding rules.
"""

from __future__ import annotations

from typing import Final

from aosk.events._avro import Codec
from aosk.events._schemas import SchemaSet, load_schemas
from aosk.events.types import EVENT_TYPES, Event, Transition

__all__ = ["SCHEMAS", "decode", "decode_transition", "encode", "encode_transition"]

#: Every version of every schema in schemas/, loaded and checked at import.
SCHEMAS: Final[SchemaSet] = load_schemas()

_EVENTS: Final = Codec(SCHEMAS, EVENT_TYPES, family="event")
_TRANSITIONS: Final = Codec(SCHEMAS, {"Transition": Transition}, family="transition")


def encode(event: Event) -> bytes:
    """Avro single-object encoding of ``event`` (current schema of its type).

    Raises EventRejected if a field does not fit the schema.
    """
    return _EVENTS.encode(event)


def decode(data: bytes) -> Event:
    """The event in ``data``, resolved into the current schema of its type.

    Raises only Undecodable or UnknownFingerprint (see aosk.errors).
    """
    return _EVENTS.decode(data)  # type: ignore[no-any-return]


def encode_transition(transition: Transition) -> bytes:
    """Avro single-object encoding of a verdict for topic aosk.agent-transitions."""
    return _TRANSITIONS.encode(transition)


def decode_transition(data: bytes) -> Transition:
    """The Transition in ``data``; raises only Undecodable or UnknownFingerprint."""
    return _TRANSITIONS.decode(data)  # type: ignore[no-any-return]
