"""``aosk backup create | verify | restore``: the journal (at its original offsets and
timestamps), the API's schema and the projections (docs/operations.md, "Backup and restore")."""

from __future__ import annotations

import argparse
from pathlib import Path

from aosk.cli._flags import add_log_level, add_no_progress, add_schema, configure_logging
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser("backup", help="archive a cluster, check an archive, restore one into an empty cluster")
    actions = backup.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = actions.add_parser(
        "create", help="archive the journal, the dead letters and pg_dumps of the projections and the API's schema",
        description="Write DIR/postgres/{projections,api}.dump (pg_dump -Fc), then every committed record of the "
        "journal and the dead letters up to their end offsets as Avro object container files "
        "(DIR/kafka/<topic>/pNNNN.avro, each record with its partition, offset, timestamp, key, value and "
        "headers), then DIR/manifest.json with counts and SHA-256 digests.",
    )
    c.add_argument("dir", type=Path, metavar="DIR", help="a new (or empty) directory")
    add_schema(c, help="projection schema to dump")
    add_no_progress(c)
    add_log_level(c, default="warning")
    c.set_defaults(run=_create)

    v = actions.add_parser("verify", help="check every file, count and digest against the manifest; exit 1 naming "
                                          "each difference")
    v.add_argument("dir", type=Path, metavar="DIR")
    add_no_progress(v)
    v.set_defaults(run=_verify)

    r = actions.add_parser(
        "restore", help="restore an archive into an empty cluster, every record at its original offset and time",
        description="Verify DIR, refuse a target whose journal is not empty (or whose API or projection schema "
        "holds rows, or whose workers run), create the topics, produce every record at its archived offset and "
        "timestamp, commit the worker group's offsets at the restored ends (workers re-fold the restored records "
        "silently), restore the API's schema and rebuild the projections from the journal (aosk replay). "
        "Start workers, projectors, runtimes and API servers afterwards.",
    )
    r.add_argument("dir", type=Path, metavar="DIR")
    add_schema(r, help="projection schema to rebuild")
    r.add_argument("--no-projections", action="store_true",
                   help="do not rebuild the projections (a projector started later folds the journal from 0)")
    add_no_progress(r)
    add_log_level(r, default="warning")
    r.set_defaults(run=_restore)


def _create(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.backup import BackupOptions, create_backup

    configure_logging(args.log_level)
    m = create_backup(settings, args.dir, BackupOptions(schema=args.schema, progress=not args.no_progress))
    for t in m.topics:
        print(f"{t.topic}: {t.records} records in {len(t.partitions)} partitions")
    for d in m.dumps:
        print(f"schema {d.schema}: " + (f"{d.file} ({d.file_bytes:,} bytes)" if d.file else "absent, not dumped"))
    print(f"archive written to {args.dir}")
    return 0


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.backup import verify_backup

    rep = verify_backup(args.dir, progress=not args.no_progress)  # BackupMismatch: exit 1 with the list
    print(f"{args.dir}: {rep.records} records and {sum(1 for d in rep.manifest.dumps if d.file)} dumps match the "
          "manifest")
    return 0


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.backup import BackupOptions, restore_backup

    configure_logging(args.log_level)
    rep = restore_backup(settings, args.dir, BackupOptions(schema=args.schema, progress=not args.no_progress,
                                                           rebuild_projections=not args.no_projections), say=print)
    print(f"restore done in {rep.seconds['total']:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in rep.seconds.items()
                                                                      if k != "total"))
    return 0
