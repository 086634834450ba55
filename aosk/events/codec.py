"""The codec instances every AOSK process shares: events and transitions.

Built once at import from the installed ``aosk.schemas`` (an immutable constant, not
mutable global state). See ``_avro`` for the wire format and the decoding rules.
"""

from __future__ import annotations

from typing import Final

from aosk.events._avro import Codec
from aosk.events._schemas import SchemaSet, load_schemas
from aosk.events._transition import transition_writer
from aosk.events.types import EVENT_TYPES, Event, Transition

__all__ = ["SCHEMAS", "decode", "decode_transition", "encode", "encode_transition", "encode_transition_fields"]

#: Every version of every schema in schemas/, loaded and checked at import.
SCHEMAS: Final[SchemaSet] = load_schemas()

_EVENTS: Final = Codec(SCHEMAS, EVENT_TYPES, family="event")
_TRANSITIONS: Final = Codec(SCHEMAS, {"Transition": Transition}, family="transition")
_FAST_TRANSITION: Final = transition_writer(SCHEMAS)


def encode(event: Event) -> bytes:
    """Avro single-object encoding of ``event`` (current schema of its type).

    Raises EventRejected if a field does not fit the schema.
    """
    return _EVENTS.encode(event)


def decode(data: bytes) -> Event:
    """The event in ``data``, resolved into the current schema of its type.

    Raises only Undecodable or UnknownFingerprint (see aosk.errors).
    """
    event: Event = _EVENTS.decode(data)  # the codec is built with event classes only
    return event


def encode_transition(transition: Transition) -> bytes:
    """Avro single-object encoding of a verdict for topic aosk.agent-transitions."""
    t = transition
    if type(t) is not Transition:
        return _TRANSITIONS.encode(t)  # raises EventRejected naming the type
    return encode_transition_fields(t.journal_partition, t.journal_offset, t.agent_id, t.event_id, t.event_type,
                                    t.verdict, t.reason, t.message, t.status, t.seq, t.state_hash, t.fold_version,
                                    t.timestamp)


def encode_transition_fields(journal_partition: int, journal_offset: int, agent_id: str, event_id: str | None,
                             event_type: str | None, verdict: str, reason: str, message: str, status: str, seq: int,
                             state_hash: bytes, fold_version: int, timestamp: int) -> bytes:
    """``encode_transition`` of the ``Transition`` with these fields (in schema order),
    without building it when the one-pass writer (``_transition``) applies."""
    if _FAST_TRANSITION is not None:
        data = _FAST_TRANSITION(journal_partition, journal_offset, agent_id, event_id, event_type, verdict, reason,
                                message, status, seq, state_hash, fold_version, timestamp)
        if data is not None:
            return data
    return _TRANSITIONS.encode(Transition(
        journal_partition=journal_partition, journal_offset=journal_offset, agent_id=agent_id, event_id=event_id,
        event_type=event_type, verdict=verdict, reason=reason, message=message, status=status, seq=seq,
        state_hash=state_hash, fold_version=fold_version, timestamp=timestamp))


def decode_transition(data: bytes) -> Transition:
    """The Transition in ``data``; raises only Undecodable or UnknownFingerprint."""
    transition: Transition = _TRANSITIONS.decode(data)  # the codec knows only Transition
    return transition
