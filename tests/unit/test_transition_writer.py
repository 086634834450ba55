"""The one-pass Transition writer writes exactly the generic codec's bytes, and falls
back to it (and its errors) for anything it does not handle."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aosk.errors import EventRejected
from aosk.events import SCHEMAS, Transition, decode_transition, encode_transition
from aosk.events._transition import transition_writer
from aosk.events.codec import _TRANSITIONS

FAST = transition_writer(SCHEMAS)

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_long = st.integers(-(2**63), 2**63 - 1)
_int = st.integers(-(2**31), 2**31 - 1)

transitions = st.builds(
    Transition,
    journal_partition=_int, journal_offset=_long, agent_id=_text,
    event_id=st.none() | _text, event_type=st.none() | _text,
    verdict=st.sampled_from(["accepted", "rejected", "duplicate"]),
    reason=_text, message=_text, status=_text, seq=_long,
    state_hash=st.binary(max_size=40), fold_version=_int, timestamp=_long,
)


def _fields(t: Transition) -> tuple:
    return tuple(getattr(t, f.name) for f in dataclasses.fields(Transition))


def test_the_current_transition_schema_has_the_fast_writer() -> None:
    assert FAST is not None, "Transition's schema changed: update aosk/events/_transition.py"


@settings(max_examples=500, deadline=None)
@given(transitions)
def test_fast_bytes_equal_the_generic_writer(t: Transition) -> None:
    assert FAST is not None
    fast = FAST(*_fields(t))
    assert fast == _TRANSITIONS.encode(t)
    assert encode_transition(t) == fast
    assert decode_transition(fast) == t


@pytest.mark.parametrize("bad", [
    {"journal_partition": 2**31}, {"fold_version": -(2**31) - 1}, {"seq": 2**63}, {"verdict": "maybe"},
    {"agent_id": None}, {"message": "\ud800"},
])
def test_misfits_fall_back_to_the_generic_writer_and_its_error(bad: dict) -> None:
    fields = dict(journal_partition=1, journal_offset=2, agent_id="a", event_id=None, event_type=None,
                  verdict="accepted", reason="ok", message="m", status="READY", seq=1, state_hash=b"h",
                  fold_version=1, timestamp=3)
    t = Transition(**{**fields, **bad})
    assert FAST is not None and FAST(*_fields(t)) is None
    with pytest.raises(EventRejected):
        encode_transition(t)
