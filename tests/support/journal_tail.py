"""Following a journal in a test without folding it each time: ``JournalTail.poll`` reads
what was appended since the last call (every partition, up to its end now) and keeps it,
so waiting for some records costs what is new, not the whole journal."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType

from aosk.config import Settings
from aosk.journal import JournalReader
from aosk.kernel import Record


class JournalTail:
    def __init__(self, settings: Settings) -> None:
        bootstrap = settings.kafka.bootstrap_servers
        assert bootstrap is not None
        self._reader = JournalReader(bootstrap, settings.kafka.journal_topic)
        self._next: dict[int, int] = {p: 0 for p in range(self._reader.partitions())}
        self.records: list[Record] = []

    def __enter__(self) -> JournalTail:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._reader.close()

    def poll(self) -> list[Record]:
        """The records appended since the last call (also added to ``records``)."""
        new: list[Record] = []
        for p, start in self._next.items():
            end = self._reader.end_offset(p)
            if end > start:
                new.extend(self._reader.read(p, start, end))
                self._next[p] = end
        self.records.extend(new)
        return new

    def count(self, event_type: str, where: Callable[[Record], bool] = lambda r: True) -> int:
        return sum(1 for r in self.records if r.event is not None and type(r.event).__name__ == event_type
                   and where(r))


def of_type(records: Iterable[Record], event_type: str) -> list[Record]:
    return [r for r in records if r.event is not None and type(r.event).__name__ == event_type]
