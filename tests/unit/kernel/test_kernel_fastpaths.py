"""The fold's fast paths agree with the plain rules they shortcut."""

from __future__ import annotations

import dataclasses
import inspect
import uuid

import pytest

from aosk.events import ContextAppended, MemoryStored
from aosk.kernel.copying import revise
from aosk.kernel.hygiene import _SPECS, check_fields
from aosk.kernel.state import ContextEntry, Counters, Dedupe, Life
from aosk.kernel.verdict import Verdict, new_verdict


def _slow_check_fields(event: object) -> str | None:
    for name, check in _SPECS[type(event)].checks:  # type: ignore[index]
        p = check(getattr(event, name))
        if p:
            return f"{name} {p}"
    return None


class _Str(str):
    pass


_WEIRD = [None, "", "a\x00b", "\ud800", "é", 0, -1, 2**63, -(2**63) - 1, True, 1.5, float("nan"), b"x", (),
          ("a\x00",), {}, {"k": "\x00"}, _Str("s"), object()]


def _context() -> ContextAppended:
    return ContextAppended(event_id=str(uuid.uuid4()), agent_id="a", tenant_id="t", occurred_at=1, origin="client",
                           entry_id="e", role="user", content="hello é", tokens=3, importance=0.5)


@pytest.mark.parametrize("value", _WEIRD, ids=repr)
@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ContextAppended)])
def test_check_fields_fast_path_reports_what_the_rule_reports(field: str, value: object) -> None:
    ev = _context()
    object.__setattr__(ev, field, value)
    assert check_fields(ev) == _slow_check_fields(ev)


def test_check_fields_clean_events() -> None:
    ev = _context()
    assert check_fields(ev) is None
    mem = MemoryStored(event_id=str(uuid.uuid4()), agent_id="a", tenant_id="t", occurred_at=1, origin="client",
                       memory_id="m", text="x", embedding=None, importance=1.0, metadata={"k": "v"})
    assert check_fields(mem) is None


@pytest.mark.parametrize(
    ("obj", "changes"),
    [
        (Counters(messages_sent=3), {"messages_sent": 4}),
        (Life(waiting_on="x"), {"waiting_on": None, "suspend_reason": "s"}),
        (Dedupe().with_event_id(str(uuid.uuid4()), 4), {"delivery_hwm": ((0, 5),)}),
    ],
)
def test_revise_is_dataclasses_replace(obj: object, changes: dict[str, object]) -> None:
    obj.json_bytes()  # type: ignore[attr-defined]  # fill the cache: revise must reset it
    new = revise(obj, **changes)
    assert new == dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    assert new.json_bytes() == dataclasses.replace(obj, **changes).json_bytes()  # type: ignore[attr-defined,type-var]


def test_dedupe_seen() -> None:
    ids = [str(uuid.uuid4()) for _ in range(6)]
    d = Dedupe()
    for i in ids:
        d = d.with_event_id(i, 4)
    for i in ids:
        assert d.seen(i) == (i in d.event_ids)
    assert not d.seen(str(uuid.uuid4()))
    decoded = Dedupe(event_ids=tuple(ids[:2]))  # no ids_json (as decoded): the tuple answers
    assert decoded.seen(ids[0]) and not decoded.seen(ids[3])


def test_new_verdict_is_the_verdict_constructor() -> None:
    """``new_verdict`` writes the slots instead of calling the frozen ``__init__``: its
    parameters must be Verdict's fields (names, order, defaults) and its result the
    object ``Verdict(...)`` builds."""
    params = list(inspect.signature(new_verdict).parameters.values())
    fields = dataclasses.fields(Verdict)
    assert [p.name for p in params] == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert [p.default for p in params] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    assert not hasattr(Verdict, "__post_init__")
    entry = ContextEntry(entry_id="e", role="user", content="c", tokens=1, importance=0.5, seq=1)
    # every field a distinct value: a setter writing the wrong slot shows
    base = dict(kind="accepted", reason="ok", message="m", agent_id="a", partition=1, offset=2, timestamp=3,
                event_id="e", event_type="AgentStarted", status="RUNNING", seq=4, state_hash=b"h", fold_version=5)
    for extra in ({}, {"event_id": None}, {"derived": (_context(),), "paged_out": (entry,), "checkpoint_due": True}):
        args = {**base, **extra}
        built, constructed = new_verdict(**args), Verdict(**args)  # type: ignore[arg-type]
        assert type(built) is Verdict
        assert built == constructed and repr(built) == repr(constructed)
        assert [getattr(built, f.name) for f in fields] == [getattr(constructed, f.name) for f in fields]
        assert [getattr(built, f.name) for f in fields] == [args.get(f.name, f.default) for f in fields]
        assert hash(built) == hash(constructed)
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.kind = "rejected"  # type: ignore[misc]
