"""``aosk backup create | verify | restore`` (docs/operations.md, "Backup and restore").

``create`` dumps the projection schema and the API's schema with ``pg_dump``, then reads
each partition's end offset and archives every committed record of the journal and the
dead letters below it as Avro object container files, then writes the manifest (last:
an archive without one is incomplete). ``verify`` reads everything again against the
manifest. ``restore`` checks that the target is empty, creates the topics (without the
fold-version markers a new journal gets: the archive's are restored), produces every
record at its original offset and timestamp (the journal in ``CreateTime`` meanwhile),
commits the worker group's offsets at the restored ends, restores the API's schema, and
rebuilds the projections with ``aosk replay``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

from aosk.backup.archive import (
    ARCHIVED_RECORD,
    MANIFEST_NAME,
    ArchivedRecord,
    ContentDigest,
    DumpEntry,
    Manifest,
    PartitionEntry,
    TopicEntry,
    file_sha256,
    partition_file,
)
from aosk.config import KafkaSettings, Settings
from aosk.errors import BackupError, BackupMismatch, RestoreRefused

__all__ = ["BackupOptions", "create_backup", "verify_backup", "restore_backup", "read_archive",
           "journal_digests", "VerifyReport", "RestoreReport"]

ROLES: Final = ("journal", "dead-letters")


def _topic(kafka: KafkaSettings, role: str) -> str:
    return kafka.journal_topic if role == "journal" else kafka.dead_letters_topic


@dataclass(frozen=True)
class BackupOptions:
    schema: str = "aosk"
    """The projection schema."""
    progress: bool = True
    rebuild_projections: bool = True
    """restore: rebuild the projections from the restored journal (``aosk replay``)."""


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", disable=not enabled, smoothing=0.1, leave=False)


def _partition_count(bootstrap: str, topic: str) -> int | None:
    from confluent_kafka.admin import AdminClient

    from aosk._kafka import cluster_metadata, quiet

    admin = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    md = cluster_metadata(admin, bootstrap, timeout=30).topics.get(topic)
    if md is None or md.error is not None:
        return None
    return len(md.partitions)


# --- create -------------------------------------------------------------------------


def _write_partition(path: Path, records: Iterable[ArchivedRecord]) -> tuple[int, int | None, int | None, str]:
    """Write ``records`` as an Avro container file; (count, first, last offset, content digest)."""
    from fastavro import parse_schema, writer

    digest = ContentDigest()
    first: int | None = None
    last: int | None = None

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal first, last
        for r in records:
            digest.add(r)
            first = r.offset if first is None else first
            last = r.offset
            yield r.to_avro()

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        writer(f, parse_schema(ARCHIVED_RECORD), rows(), codec="deflate", sync_interval=1 << 20)
    return digest.count, first, last, digest.hexdigest()


def create_backup(settings: Settings, out: Path, options: BackupOptions = BackupOptions()) -> Manifest:
    import psycopg

    from aosk.backup.kafka import end_offsets, partition_reader, read_partition
    from aosk.backup.postgres import dump_schema, schema_exists
    from aosk.endpoints import resolve_endpoints

    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: back up into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    ep = resolve_endpoints(settings)
    k = settings.kafka
    partitions = _partition_count(ep.bootstrap, k.journal_topic)
    if partitions is None:
        raise BackupError(f"there is no journal topic {k.journal_topic} to back up")

    # The dumps first: every offset they name is then below the end offsets read next.
    dumps: list[DumpEntry] = []
    (out / "postgres").mkdir(exist_ok=True)
    with psycopg.connect(ep.dsn, autocommit=True) as conn:
        present = {role: schema_exists(conn, schema)
                   for role, schema in (("projections", options.schema), ("api", settings.api.schema_name))}
    for role, schema in (("projections", options.schema), ("api", settings.api.schema_name)):
        if not present[role]:
            dumps.append(DumpEntry(role, schema, None))
            continue
        rel = f"postgres/{role}.dump"
        dump_schema(ep.dsn, schema, out / rel)
        dumps.append(DumpEntry(role, schema, rel, (out / rel).stat().st_size, file_sha256(out / rel)))

    topics: list[TopicEntry] = []
    ends = {role: end_offsets(ep.bootstrap, _topic(k, role), partitions) for role in ROLES
            if _partition_count(ep.bootstrap, _topic(k, role)) == partitions}
    total = sum(high - low for e in ends.values() for low, high in e.values())
    consumer = partition_reader(ep.bootstrap)
    with _bar(total, "backup", options.progress) as bar:
        for role in ROLES:
            if role not in ends:
                if role == "journal":
                    raise BackupError(f"{k.journal_topic}: partition count changed during the backup")
                continue  # no dead-letter topic (or another layout): nothing to keep
            topic = _topic(k, role)
            entries = []
            for p in range(partitions):
                end = ends[role][p][1]
                rel = partition_file(role, p)

                def counted(it: Iterator[ArchivedRecord]) -> Iterator[ArchivedRecord]:
                    for r in it:
                        bar.update(1)
                        yield r

                n, first, last, content = _write_partition(
                    out / rel, counted(read_partition(ep.bootstrap, topic, p, end, consumer=consumer)))
                entries.append(PartitionEntry(p, n, first, last, end, rel, (out / rel).stat().st_size,
                                              file_sha256(out / rel), content))
            topics.append(TopicEntry(role, topic, entries))
    consumer.close()
    manifest = Manifest(created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), topic_prefix=k.topic_prefix,
                        partitions=partitions, topics=topics, dumps=dumps,
                        notes={"design": "docs/operations.md, Backup and restore"})
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, out / MANIFEST_NAME)
    return manifest


# --- verify -------------------------------------------------------------------------


def read_archive(root: Path, entry: PartitionEntry) -> Iterator[ArchivedRecord]:
    from fastavro import reader

    with (root / entry.file).open("rb") as f:
        for d in reader(f):
            yield ArchivedRecord.from_avro(d)  # type: ignore[arg-type]


def load_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not path.exists():
        raise BackupError(f"{path} not found: not an archive, or an incomplete one (the manifest is written last)")
    return Manifest.from_json(path.read_text())


@dataclass
class VerifyReport:
    manifest: Manifest
    records: int = 0
    problems: list[str] = field(default_factory=list)


def verify_backup(root: Path, *, progress: bool = True) -> VerifyReport:
    """Every file's size and SHA-256, every partition's count, offsets and content digest
    against the manifest. Raises ``BackupMismatch`` naming each difference."""
    m = load_manifest(root)
    rep = VerifyReport(m)
    for d in m.dumps:
        if d.file is None:
            continue
        path = root / d.file
        if not path.exists():
            rep.problems.append(f"{d.file}: missing")
        elif path.stat().st_size != d.file_bytes or file_sha256(path) != d.file_sha256:
            rep.problems.append(f"{d.file}: SHA-256 differs from the manifest's")
    total = sum(t.records for t in m.topics)
    with _bar(total, "verify", progress) as bar:
        for t in m.topics:
            for e in t.partitions:
                name = f"{t.role} partition {e.partition} ({e.file})"
                path = root / e.file
                if not path.exists():
                    rep.problems.append(f"{name}: missing")
                    continue
                if path.stat().st_size != e.file_bytes or file_sha256(path) != e.file_sha256:
                    rep.problems.append(f"{name}: file SHA-256 differs from the manifest's")
                digest = ContentDigest()
                prev = -1
                try:
                    for r in read_archive(root, e):
                        if r.partition != e.partition or r.offset <= prev:
                            rep.problems.append(f"{name}: record at offset {r.offset} (partition {r.partition}) "
                                                f"out of place after offset {prev}")
                            break
                        prev = r.offset
                        digest.add(r)
                        bar.update(1)
                except Exception as ex:  # noqa: BLE001 - a damaged file is a finding, not a crash
                    rep.problems.append(f"{name}: unreadable Avro ({ex})")
                    continue
                rep.records += digest.count
                if digest.count != e.records:
                    rep.problems.append(f"{name}: {digest.count} records, the manifest says {e.records}")
                elif digest.hexdigest() != e.content_sha256:
                    rep.problems.append(f"{name}: content SHA-256 differs from the manifest's")
                if prev >= e.end_offset:
                    rep.problems.append(f"{name}: record at offset {prev} at or past the end offset {e.end_offset}")
    if rep.problems:
        raise BackupMismatch(f"{root}: {len(rep.problems)} difference(s) from the manifest:\n  "
                             + "\n  ".join(rep.problems))
    return rep


def journal_digests(settings: Settings, bootstrap: str, partitions: int) -> dict[str, dict[int, tuple[int, str]]]:
    """(count, content digest) per partition of the journal and dead letters as they are
    now in Kafka (what a restore is checked with)."""
    from aosk.backup.kafka import end_offsets, partition_reader, read_partition

    out: dict[str, dict[int, tuple[int, str]]] = {}
    consumer = partition_reader(bootstrap)
    for role in ROLES:
        topic = _topic(settings.kafka, role)
        ends = end_offsets(bootstrap, topic, partitions)
        out[role] = {}
        for p in range(partitions):
            d = ContentDigest()
            for r in read_partition(bootstrap, topic, p, ends[p][1], consumer=consumer):
                d.add(r)
            out[role][p] = (d.count, d.hexdigest())
    consumer.close()
    return out


# --- restore ------------------------------------------------------------------------


@dataclass
class RestoreReport:
    records: dict[str, int]
    partitions: int
    replayed: int | None
    api_restored: bool
    seconds: dict[str, float]


def _check_target(settings: Settings, bootstrap: str, dsn: str, m: Manifest, options: BackupOptions) -> None:
    """Everything a restore refuses, before it writes anything."""
    import psycopg

    from aosk.backup.kafka import end_offsets
    from aosk.backup.postgres import schema_exists, tables_with_rows

    k = settings.kafka
    for role in ROLES:
        topic = _topic(k, role)
        n = _partition_count(bootstrap, topic)
        if n is None:
            continue
        if n != m.partitions:
            raise RestoreRefused(f"{topic} has {n} partitions, the archive {m.partitions}: restore into a cluster "
                                 "without these topics (they are created with the archive's count)")
        full = {p: high for p, (_, high) in end_offsets(bootstrap, topic, n).items() if high > 0}
        if full:
            raise RestoreRefused(
                f"{topic} is not empty (partition {min(full)} ends at offset {full[min(full)]}): a restore keeps "
                "every record's offset, so it needs an empty journal. Note that `aosk topics ensure` writes "
                "fold-version markers into a journal it creates: let the restore create the topics")
    _check_worker_group(settings, bootstrap)
    with psycopg.connect(dsn, autocommit=True) as conn:
        api = settings.api.schema_name
        if schema_exists(conn, api) and (full_tables := tables_with_rows(conn, api)):
            raise RestoreRefused(f"schema {api} already holds rows in {', '.join(full_tables)}: restore into a "
                                 "database without the API's keys, owners and idempotency records")
        if options.rebuild_projections and schema_exists(conn, options.schema) and (
                full_tables := tables_with_rows(conn, options.schema)):
            raise RestoreRefused(f"projection schema {options.schema} already holds rows in "
                                 f"{', '.join(full_tables)}: restore into an empty database")


def _check_worker_group(settings: Settings, bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    from aosk._kafka import quiet
    from aosk.streams.kafka import group_id

    group = group_id(settings.kafka.topic_prefix)
    admin = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    try:
        d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except Exception:  # noqa: BLE001 - no such group: nothing runs
        return
    if d.members:
        raise RestoreRefused(f"consumer group {group} has {len(d.members)} member(s): stop every worker of the "
                             "target cluster before restoring")


def _commit_worker_offsets(settings: Settings, bootstrap: str, ends: dict[int, int]) -> None:
    """The worker group resumes after the restored records: a worker re-folds them
    silently (no verdicts, no derived events) and judges only what comes after."""
    from confluent_kafka import Consumer, TopicPartition

    from aosk._kafka import quiet
    from aosk.streams.kafka import group_id

    c = Consumer(quiet({"bootstrap.servers": bootstrap, "group.id": group_id(settings.kafka.topic_prefix),
                        "enable.auto.commit": False}))
    try:
        got = c.commit(offsets=[TopicPartition(settings.kafka.journal_topic, p, o) for p, o in sorted(ends.items())],
                       asynchronous=False)
        bad = [tp for tp in got or [] if tp.error is not None]
        if bad:
            raise BackupError(f"committing the worker group's offsets failed: {bad[0].error}")
    finally:
        c.close()


def restore_backup(settings: Settings, root: Path, options: BackupOptions = BackupOptions(),
                   *, say: Callable[[str], None] = lambda s: None) -> RestoreReport:
    import time

    from aosk.backup.kafka import _Producers, restore_partition, set_timestamp_type, timestamp_type
    from aosk.backup.postgres import drop_empty_schema, restore_schema
    from aosk.endpoints import resolve_endpoints
    from aosk.topics import ensure_topics

    t0 = time.monotonic()
    m = verify_backup(root, progress=options.progress).manifest
    seconds = {"verify": time.monotonic() - t0}
    ep = resolve_endpoints(settings)
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"journal_partitions": m.partitions})})
    k = settings.kafka
    _check_target(settings, ep.bootstrap, ep.dsn, m, options)

    ensure_topics(ep.bootstrap, k)  # no markers: the archive holds the journal's own
    counts: dict[str, int] = {}
    t1 = time.monotonic()
    total = sum(t.records for t in m.topics)
    producers = _Producers(ep.bootstrap, "aosk-backup-restore")
    try:
        with _bar(total, "restore", options.progress) as bar:
            for t in m.topics:
                topic = _topic(k, t.role)
                before = timestamp_type(ep.bootstrap, topic)
                if before != "CreateTime":
                    # Workers and projectors refuse to start meanwhile (ensure_topics sees the
                    # mismatch); left so if the restore fails, so nothing folds a partial journal.
                    set_timestamp_type(ep.bootstrap, topic, "CreateTime")
                for e in t.partitions:
                    restore_partition(producers, topic, e.partition, partial(read_archive, root, e),
                                      e.end_offset, progress=bar.update)
                if before != "CreateTime":
                    set_timestamp_type(ep.bootstrap, topic, before)
                counts[t.role] = t.records
                say(f"restored {t.records} records of {topic} at their offsets and timestamps")
    finally:
        producers.close()
    seconds["kafka"] = time.monotonic() - t1
    journal = m.topic("journal")
    _commit_worker_offsets(settings, ep.bootstrap, {e.partition: e.end_offset for e in journal.partitions})
    say("committed the worker group's offsets at the restored end offsets "
        f"({sum(e.end_offset for e in journal.partitions)} in all): workers re-fold the restored records silently")

    import psycopg

    api = m.dump("api")
    api_restored = False
    if api is not None and api.file is not None:
        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            drop_empty_schema(conn, settings.api.schema_name)
        if api.schema != settings.api.schema_name:
            raise BackupError(f"the archive's API schema is {api.schema}, this cluster's {settings.api.schema_name}: "
                              "set api.schema_name to match")
        t2 = time.monotonic()
        restore_schema(ep.dsn, root / api.file)
        seconds["api"] = time.monotonic() - t2
        api_restored = True
        say(f"restored schema {api.schema} (API keys, agent owners, idempotency records)")
    replayed = None
    if options.rebuild_projections:
        from aosk.projectors.replay import ReplayOptions, replay

        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            drop_empty_schema(conn, options.schema)
        t3 = time.monotonic()
        with _bar(0, "replay", options.progress) as bar:
            def replayed_so_far(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            r = replay(settings, ReplayOptions(schema=options.schema, drop_old=True), progress=replayed_so_far)
        seconds["replay"] = time.monotonic() - t3
        replayed = r.records
        say(f"rebuilt the projections in {options.schema} from the restored journal ({r.records} records)")
    seconds["total"] = time.monotonic() - t0
    return RestoreReport(counts, m.partitions, replayed, api_restored, seconds)
