"""JournalReader reads exact offset ranges and finds offsets by broker time."""

from __future__ import annotations

import pytest

from aosk.journal import JournalReader
from aosk.kernel import fold_journal
from aosk.topics import ensure_topics
from aosk.workload import RawRecord, generate_workload, produce_workload

pytestmark = pytest.mark.integration


def test_ranges_times_and_plain_fold(settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    ensure_topics(bootstrap, settings.kafka)
    wl = generate_workload(agents=10, events=600, seed=5, garbage_every=100)
    positions = produce_workload(bootstrap, settings.kafka.journal_topic, wl.items)
    with JournalReader(bootstrap, settings.kafka.journal_topic) as reader:
        assert reader.partitions() == 12
        records = [r for p in range(12) for r in reader.read(p, 0)]
        assert len(records) == len(wl.items)
        assert sum(1 for r in records if r.error is not None) == wl.garbage > 0
        by_pos = {(r.partition, r.offset): r for r in records}
        for item, pos in zip(wl.items, positions, strict=True):
            r = by_pos[pos]
            if isinstance(item, RawRecord):
                assert r.event is None and r.value == item.value
            else:
                assert r.event == item
        p, _ = positions[-1]
        end = reader.end_offset(p)
        middle = list(reader.read(p, 2, 5))
        assert [r.offset for r in middle] == [2, 3, 4]
        assert list(reader.read(p, end)) == []
        first = by_pos[(p, 0)]
        assert reader.offset_for_time(p, first.timestamp) == 0
        assert reader.offset_for_time(p, 2**62) == end
    slots = fold_journal(sorted(records, key=lambda r: (r.partition, r.offset)))
    assert {a for a in wl.agents} <= set(slots)
