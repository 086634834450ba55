"""The pure parts of ``aosk backup``: the restore plan (how gaps are rebuilt), the content
digest, the manifest, and ``verify`` on an archive written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aosk.backup.archive import (
    Aborted,
    ArchivedRecord,
    Committed,
    ContentDigest,
    DumpEntry,
    Manifest,
    PartitionEntry,
    Plain,
    TopicEntry,
    expected_layout,
    file_sha256,
    partition_file,
    restore_steps,
)
from aosk.backup.run import _write_partition, read_archive, verify_backup
from aosk.errors import BackupError, BackupMismatch


def _layout(offsets: list[int], end: int) -> list[int]:
    """The offsets a plan puts records at, simulating the broker: each produced record,
    filler and marker takes the next offset."""
    steps = restore_steps(offsets, [1000 + o for o in offsets], end)
    at, placed = 0, []
    for s, after in expected_layout(steps, offsets):
        if isinstance(s, Plain):
            for _ in s.indexes:
                placed.append(at)
                at += 1
        elif isinstance(s, Committed):
            placed.append(at)
            at += 2  # the record, then its commit marker
        else:
            at += s.fillers + 1  # fillers, then the abort marker (no record a reader sees)
        assert at == after
    assert at == end
    return placed


@pytest.mark.parametrize("offsets,end", [
    ([], 0),
    ([0, 1, 2], 3),
    ([0, 2, 3], 4),          # a commit marker at 1
    ([0, 1, 2], 4),          # a commit marker after the last record
    ([0, 4, 5], 6),          # an aborted transaction of 2 records + marker at 1..3
    ([3, 4], 5),             # aborted records and a marker before the first record
    ([0, 2, 4, 6, 9], 11),   # markers everywhere, a gap of 2, a gap at the end
    ([], 5),                 # only aborted records
])
def test_plans_put_every_record_at_its_offset(offsets: list[int], end: int) -> None:
    assert _layout(offsets, end) == offsets


def test_plan_shapes() -> None:
    assert restore_steps([0, 1, 2], [1, 2, 3], 3) == [Plain(range(0, 3))]
    assert restore_steps([0, 2], [1, 2], 3) == [Committed(0), Plain(range(1, 2))]
    assert restore_steps([0, 2], [1, 2], 4) == [Committed(0), Committed(1)]
    assert restore_steps([0, 1, 5], [1, 2, 3], 6) == [Plain(range(0, 2)), Aborted(2, 2), Plain(range(2, 3))]
    assert restore_steps([2], [7], 3) == [Aborted(1, 7), Plain(range(0, 1))]


def test_a_layout_kafka_cannot_make_is_refused() -> None:
    with pytest.raises(BackupError, match="one offset before the first record"):
        restore_steps([1, 2], [0, 0], 3)
    with pytest.raises(BackupError, match="not ascending"):
        restore_steps([0, 0], [0, 0], 2)
    with pytest.raises(BackupError, match="not ascending"):
        restore_steps([0, 4], [0, 0], 3)  # a record at or past the end offset


def _records(partition: int, offsets: list[int]) -> list[ArchivedRecord]:
    return [ArchivedRecord(partition, o, 1_700_000_000_000 + o, 2, None if o % 3 == 0 else f"agent-{o}".encode(),
                           None if o % 5 == 4 else bytes([o % 256]) * (o % 7), (("h", b"v"), ("n", None))
                           if o % 2 else ()) for o in offsets]


def test_content_digest_covers_positions_time_and_bytes_but_not_the_timestamp_type() -> None:
    base = _records(0, [0, 1, 2])

    def digest(rs: list[ArchivedRecord]) -> str:
        d = ContentDigest()
        for r in rs:
            d.add(r)
        return d.hexdigest()

    from dataclasses import replace

    same = digest(base)
    assert digest([replace(base[0], timestamp_type=1), *base[1:]]) == same
    for change in ({"offset": 5}, {"partition": 1}, {"timestamp": 1}, {"key": b"x"}, {"value": b"x"},
                   {"headers": (("h", b"w"),)}, {"key": b""}):
        assert digest([replace(base[0], **change), *base[1:]]) != same, change  # type: ignore[arg-type]
    assert digest(base[:2]) != same


def _archive(root: Path) -> Manifest:
    entries = []
    for p, offsets in ((0, [0, 1, 3, 7]), (1, [])):
        rel = partition_file("journal", p)
        n, first, last, content = _write_partition(root / rel, _records(p, offsets))
        entries.append(PartitionEntry(p, n, first, last, (offsets[-1] + 2) if offsets else 0, rel,
                                      (root / rel).stat().st_size, file_sha256(root / rel), content))
    (root / "postgres").mkdir()
    (root / "postgres" / "api.dump").write_bytes(b"PGDMP dump bytes")
    dump = DumpEntry("api", "aosk_api", "postgres/api.dump", 16, file_sha256(root / "postgres" / "api.dump"))
    m = Manifest("2026-01-01T00:00:00+00:00", "aosk", 2, [TopicEntry("journal", "aosk.agent-events", entries)],
                 [dump, DumpEntry("projections", "aosk", None)])
    (root / "manifest.json").write_text(m.to_json())
    return m


def test_archive_files_read_back_and_verify(tmp_path: Path) -> None:
    m = _archive(tmp_path)
    assert Manifest.from_json((tmp_path / "manifest.json").read_text()) == m
    got = list(read_archive(tmp_path, m.topic("journal").partitions[0]))
    assert got == _records(0, [0, 1, 3, 7])
    rep = verify_backup(tmp_path, progress=False)
    assert rep.records == 4


def test_verify_names_each_difference(tmp_path: Path) -> None:
    m = _archive(tmp_path)
    (tmp_path / "postgres" / "api.dump").write_bytes(b"PGDMP dump bytez")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["topics"][0]["partitions"][0]["records"] = 5
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / m.topic("journal").partitions[1].file).unlink()
    with pytest.raises(BackupMismatch) as e:
        verify_backup(tmp_path, progress=False)
    text = str(e.value)
    assert "postgres/api.dump: SHA-256 differs" in text
    assert "journal partition 0 (kafka/journal/p0000.avro): 4 records, the manifest says 5" in text
    assert "journal partition 1 (kafka/journal/p0001.avro): missing" in text


def test_verify_refuses_what_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="manifest.json not found"):
        verify_backup(tmp_path, progress=False)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(BackupError, match="unknown archive format"):
        verify_backup(tmp_path, progress=False)
