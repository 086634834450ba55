"""``aosk kernel upgrade --to-version N``: switch the fold version, partition by partition.

Writes one ``KernelUpgraded`` marker without a key (origin ``kernel``) to every journal
partition, carrying the journal's live partition count (every fold version from 2 on
records it and routes keys by murmur2 over it; version 3 also rejects all-zero
embeddings). From its offset on, that partition folds under version N; everything before
keeps the verdicts it was given. Deploy workers and projectors that know version N
first: a reader that does not know it stops the partition at the marker (loudly,
nothing skipped) until it is upgraded. docs/recovery.md ("A fold change").
"""

from __future__ import annotations

import argparse

from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kernel = sub.add_parser("kernel", help="kernel-wide operations on the journal")
    actions = kernel.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="write a KernelUpgraded marker to every journal partition")
    up.add_argument("--to-version", type=int, required=True, metavar="N")
    up.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    up.set_defaults(run=_upgrade)


def _upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.journal import JournalReader
    from aosk.kernel import VERSIONS
    from aosk.topics import write_partition_markers

    ep = resolve_endpoints(settings)
    if args.to_version not in VERSIONS:
        print(f"warning: this AOSK does not know fold version {args.to_version} (known: {sorted(VERSIONS)}); "
              "workers and projectors running this code will stop every partition at the marker")
    if not args.yes:
        print("re-run with --yes to write the markers")
        return 2
    with JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
        partitions = reader.partitions()
    written = write_partition_markers(ep.bootstrap, settings.kafka.journal_topic, fold_version=args.to_version,
                                      partitions=partitions)
    for p, offset in written:
        print(f"KernelUpgraded(fold_version={args.to_version}, partitions={partitions}) at {p}:{offset}")
    return 0
