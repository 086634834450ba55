"""The ``events`` rows: one per journal record, and folding them back gives the journal's
states (what time travel from the projection relies on)."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from test_projection_rows import mixed_journal

from aosk.kernel import apply, fold_journal, state_hash
from aosk.projectors.batch import fold_batch
from aosk.projectors.event_rows import EVENT_COLUMNS, EVENT_TYPES, event_row, payload_json, record_of
from aosk.projectors.rows import ms_of


def _rows() -> tuple[list[Any], list[dict[str, Any]]]:
    records = mixed_journal(600)
    parts: dict[int, list[Any]] = {}
    for r in records:
        parts.setdefault(r.partition, []).append(r)
    batch = fold_batch(parts, {}.get, checkpoint_every=100)
    return records, [dict(zip(EVENT_COLUMNS, o.event, strict=True)) for o in batch.outcomes]


def test_columns_match_the_migration() -> None:
    assert len(EVENT_COLUMNS) == len(EVENT_TYPES)
    text = resources.files("aosk.projectors").joinpath("migrations/0005_events.sql").read_text()
    start = text.index("create table events (")
    body = text[start:text.index(");", start)]
    declared = re.findall(r"^\s{4}([a-z_]+)\s", body, flags=re.M)
    assert tuple(c for c in declared if c != "primary") == EVENT_COLUMNS


def test_every_record_has_a_row_and_its_rows_fold_back_to_the_same_states() -> None:
    records, rows = _rows()
    assert [(r["journal_partition"], r["journal_offset"]) for r in rows] == [(r.partition, r.offset)
                                                                            for r in records]
    assert any(r["event_type"] is None and json.loads(r["payload"].obj)["error"] == "undecodable" for r in rows)
    expected = fold_journal(records)
    slots: dict[str, Any] = {}
    for row in rows:
        agent = row["agent_id"]
        if agent.startswith("~"):
            continue  # the partitions' pseudo-agents (markers and garbage without a key)
        payload = json.loads(row["payload"].obj)
        rec = record_of(agent, row["journal_partition"], row["journal_offset"], row["event_type"], payload,
                        ms_of(row["broker_time"]))
        slots[agent], v = apply(slots.get(agent), rec)
        assert (v.kind, v.reason, v.seq) == (row["verdict"], row["reason"], row["seq"])
    assert slots
    for agent, slot in slots.items():
        assert state_hash(slot.state) == state_hash(expected[agent].state), agent


def test_values_jsonb_would_refuse_are_escaped_and_come_back() -> None:
    from aosk.projectors.event_rows import _unescaped

    plain = {"a": "x\x00y", "n": float("inf"), "s": ["\udcff", "ok"], "m": {"k\x00": 1}}
    text = payload_json(plain)
    text.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in text and "Infinity" in text
    back = _unescaped(json.loads(text))
    assert back == {"a": "x\x00y", "n": float("inf"), "s": ["\udcff", "ok"], "m": {"k\ufffd": 1}}
    row = event_row((0, 1, "a", 2, None, "t", "e", "T", None, "accepted", "ok"), None, None)
    assert json.loads(row[EVENT_COLUMNS.index("payload")].obj) == {"error": "undecodable", "reason": "None"}


def test_the_fast_plain_conversion_is_event_to_plain() -> None:
    from aosk.kernel import event_to_plain
    from aosk.projectors.event_rows import _plain_fields

    records, _ = _rows()
    seen = set()
    for r in records:
        if r.event is not None:
            want = event_to_plain(r.event)
            del want["type"]
            assert _plain_fields(r.event) == want
            seen.add(type(r.event).__name__)
    assert {"AgentSpawned", "MemoryStored", "ContextAppended"} <= seen


def test_payload_read_as_text_comes_back_as_stored() -> None:
    from aosk.kernel import event_from_plain, event_to_plain
    from aosk.projectors.event_rows import payload_of

    plain = {"a": "x\x00y", "n": float("inf"), "s": ["\udcff", "ok"], "e": [0.5, 1.0, -2.25]}
    # jsonb's own text form has spaces after separators: parse whatever JSON comes back
    text = json.dumps(json.loads(payload_json(plain)))
    assert payload_of(text) == {"a": "x\x00y", "n": float("inf"), "s": ["\udcff", "ok"], "e": [0.5, 1.0, -2.25]}
    plain_text = json.dumps({"embedding": [0.25] * 4, "k": "~escaped is just text here"})
    assert payload_of(plain_text) == json.loads(plain_text)
    # every event of the mixed journal reads back equal through the text form
    records, rows = _rows()
    for r, row in zip(records, rows, strict=True):
        if r.event is not None and row["event_type"] is not None:
            back = payload_of(json.dumps(json.loads(row["payload"].obj)))
            assert event_from_plain({**back, "type": row["event_type"]}) == r.event
            assert event_from_plain(event_to_plain(r.event)) == r.event


def test_payload_parser_reads_what_json_loads_reads() -> None:
    """``payload_of`` parses with msgspec, which must give exactly ``json.loads``'s values:
    integers past 64 bits stay exact integers, and what msgspec refuses (a number past a
    double's range, which ``json.loads`` makes infinite; a lone surrogate escape) is read
    by ``json.loads`` instead of failing."""
    import math
    import random

    from aosk.projectors.event_rows import payload_of

    rng = random.Random(5)
    floats = [rng.uniform(-1, 1) for _ in range(300)] + [rng.random() * 10.0 ** rng.randint(-320, 308)
                                                        for _ in range(300)]
    floats += [5e-324, 2.2250738585072011e-308, 1.7976931348623157e308, -0.0, 0.1, 1e22, 4.35e-7]
    ints = [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**30]
    texts = [json.dumps({"embedding": floats, "ints": ints}),
             '{"x": 1e400, "y": -1e400}', '{"s": "\\ud800 alone"}', '{"d": 1.00000000000000011102230246251565404}',
             '{"e": 123456789012345678901234567890.5, "z": 1e-400}']
    for text in texts:
        got, want = payload_of(text), json.loads(text)
        assert repr(got) == repr(want), text[:80]
        for k, v in want.items():  # same types too (an int stays an int)
            assert type(got[k]) is type(v)
    assert math.isinf(payload_of('{"x": 1e400}')["x"])
