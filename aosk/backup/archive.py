"""The archive's format and the pure parts of a restore (docs/operations.md, "Backup and
restore").

* ``ARCHIVED_RECORD``: the Avro schema of one Kafka record in the archive (its original
  partition, offset, timestamp and timestamp type, key, value and headers).
* ``ContentDigest``: a SHA-256 of records' content in a fixed encoding, independent of
  the Avro file's bytes (codec, sync markers), so a backup of a restored cluster has the
  digests of the backup it was restored from.
* ``Manifest``: counts and digests per topic, partition and dump, as JSON.
* ``restore_steps``: how a partition's records and gaps are produced again so that every
  record lands at its archived offset (plain records, a record in a committed
  transaction whose commit marker fills a one-offset gap, an aborted transaction of
  fillers whose records and abort marker fill a longer gap).

No Kafka and no PostgreSQL here.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from aosk.errors import BackupError

__all__ = ["ARCHIVED_RECORD", "FORMAT", "ArchivedRecord", "ContentDigest", "PartitionEntry", "TopicEntry",
           "DumpEntry", "Manifest", "Plain", "Committed", "Aborted", "Step", "restore_steps", "file_sha256",
           "partition_file", "MANIFEST_NAME"]

FORMAT: Final = "aosk-backup/1"
MANIFEST_NAME: Final = "manifest.json"

ARCHIVED_RECORD: Final[dict[str, Any]] = {
    "type": "record",
    "name": "ArchivedRecord",
    "namespace": "aosk.backup",
    "doc": "One Kafka record as it was in the backed-up topic.",
    "fields": [
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "timestamp", "type": "long", "doc": "milliseconds since the epoch"},
        {"name": "timestamp_type", "type": "int", "doc": "Kafka's: 0 none, 1 CreateTime, 2 LogAppendTime"},
        {"name": "key", "type": ["null", "bytes"]},
        {"name": "value", "type": ["null", "bytes"]},
        {"name": "headers", "type": {"type": "array", "items": {
            "type": "record", "name": "Header",
            "fields": [{"name": "name", "type": "string"}, {"name": "value", "type": ["null", "bytes"]}],
        }}},
    ],
}


@dataclass(frozen=True)
class ArchivedRecord:
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def to_avro(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "timestamp": self.timestamp,
                "timestamp_type": self.timestamp_type, "key": self.key, "value": self.value,
                "headers": [{"name": n, "value": v} for n, v in self.headers]}

    @staticmethod
    def from_avro(d: dict[str, Any]) -> ArchivedRecord:
        return ArchivedRecord(d["partition"], d["offset"], d["timestamp"], d["timestamp_type"], d["key"], d["value"],
                              tuple((h["name"], h["value"]) for h in d["headers"]))


_HEAD: Final = struct.Struct(">iqq")
_LEN: Final = struct.Struct(">i")


def _blob(b: bytes | None) -> bytes:
    return _LEN.pack(-1) if b is None else _LEN.pack(len(b)) + b


class ContentDigest:
    """SHA-256 over each record's partition, offset, timestamp, key, value and headers,
    length-prefixed (null -1), in the order added. The timestamp type is left out: a
    restored record keeps its time but is read back as CreateTime."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def add(self, r: ArchivedRecord) -> None:
        h = self._h
        h.update(_HEAD.pack(r.partition, r.offset, r.timestamp))
        h.update(_blob(r.key))
        h.update(_blob(r.value))
        h.update(_LEN.pack(len(r.headers)))
        for name, value in r.headers:
            h.update(_blob(name.encode("utf-8")))
            h.update(_blob(value))
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def partition_file(role: str, partition: int) -> str:
    """The archive-relative path of a topic role's partition file."""
    return f"kafka/{role}/p{partition:04d}.avro"


@dataclass(frozen=True)
class PartitionEntry:
    partition: int
    records: int
    first_offset: int | None
    last_offset: int | None
    end_offset: int
    """The partition's end offset when the backup read it: the restore rebuilds the gap
    between the last record and it too."""
    file: str
    file_bytes: int
    file_sha256: str
    content_sha256: str


@dataclass(frozen=True)
class TopicEntry:
    role: str
    """``journal`` or ``dead-letters``."""
    topic: str
    partitions: list[PartitionEntry]

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)


@dataclass(frozen=True)
class DumpEntry:
    role: str
    """``projections`` or ``api``."""
    schema: str
    file: str | None
    """None: the schema did not exist, nothing was dumped."""
    file_bytes: int = 0
    file_sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    created_at: str
    topic_prefix: str
    partitions: int
    topics: list[TopicEntry]
    dumps: list[DumpEntry]
    format: str = FORMAT
    notes: dict[str, str] = field(default_factory=dict)

    def topic(self, role: str) -> TopicEntry:
        for t in self.topics:
            if t.role == role:
                return t
        raise BackupError(f"the manifest has no topic of role {role!r}")

    def dump(self, role: str) -> DumpEntry | None:
        return next((d for d in self.dumps if d.role == role), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise BackupError(f"unknown archive format {d.get('format')!r} (this version reads {FORMAT})")
            return Manifest(
                created_at=d["created_at"], topic_prefix=d["topic_prefix"], partitions=int(d["partitions"]),
                topics=[TopicEntry(t["role"], t["topic"], [PartitionEntry(**p) for p in t["partitions"]])
                        for t in d["topics"]],
                dumps=[DumpEntry(**x) for x in d["dumps"]], format=d["format"], notes=dict(d.get("notes", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise BackupError(f"the manifest is not one this version writes: {e!r}") from e


# --- restore plan -------------------------------------------------------------------


@dataclass(frozen=True)
class Plain:
    """Records produced one after the other by the idempotent producer (consecutive offsets)."""

    indexes: range


@dataclass(frozen=True)
class Committed:
    """One record produced in a transaction that is committed: its commit marker takes
    the next offset (the archive's one-offset gap)."""

    index: int


@dataclass(frozen=True)
class Aborted:
    """``fillers`` records in a transaction that is aborted: with the abort marker they
    take ``fillers + 1`` offsets, invisible to ``read_committed`` readers."""

    fillers: int
    timestamp: int


Step = Plain | Committed | Aborted


def restore_steps(offsets: Sequence[int], timestamps: Sequence[int], end_offset: int, *,
                  what: str = "partition") -> list[Step]:
    """The steps that put records at ``offsets`` (ascending) of an empty partition and
    leave its end offset at ``end_offset``. Raises ``BackupError`` if Kafka cannot
    produce that layout (a single offset before the first record: a marker always
    follows a record of its own transaction)."""
    steps: list[Step] = []
    n = len(offsets)
    if n != len(timestamps):
        raise ValueError("offsets and timestamps differ in length")
    first = offsets[0] if n else end_offset
    if first == 1:
        raise BackupError(f"{what}: one offset before the first record cannot be rebuilt (a transaction marker "
                          "follows a record); the archive does not start where a journal does")
    if first > 1:
        steps.append(Aborted(first - 1, timestamps[0] if n else 0))
    run_start = 0
    for i in range(n):
        nxt = offsets[i + 1] if i + 1 < n else end_offset
        if nxt <= offsets[i]:
            raise BackupError(f"{what}: offsets are not ascending at offset {offsets[i]} (next {nxt})")
        gap = nxt - offsets[i] - 1
        if gap == 0:
            continue
        if gap == 1:
            if run_start < i:
                steps.append(Plain(range(run_start, i)))
            steps.append(Committed(i))
        else:
            steps.append(Plain(range(run_start, i + 1)))
            steps.append(Aborted(gap - 1, timestamps[i]))
        run_start = i + 1
    if run_start < n:
        steps.append(Plain(range(run_start, n)))
    return steps


def expected_layout(steps: Iterable[Step], offsets: Sequence[int]) -> Iterator[tuple[Step, int]]:
    """Each step with the end offset the partition has after it (for checks and waits)."""
    at = 0
    for s in steps:
        if isinstance(s, Plain):
            at = offsets[s.indexes[-1]] + 1 if len(s.indexes) else at
        elif isinstance(s, Committed):
            at = offsets[s.index] + 2
        else:
            at += s.fillers + 1
        yield s, at
