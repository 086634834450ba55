"""``aosk kernel upgrade --to-version N``: switch the fold version, partition by partition.

Writes one ``KernelUpgraded`` marker without a key (origin ``kernel``) to every journal
partition. From its offset on, that partition folds under version N; everything before
keeps the verdicts it was given. Deploy workers and projectors that know version N
first: a reader that does not know it stops the partition at the marker (loudly,
nothing skipped) until it is upgraded. docs/recovery.md ("A fold change").
"""

from __future__ import annotations

import argparse
import time
import uuid

from aosk.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kernel = sub.add_parser("kernel", help="kernel-wide operations on the journal")
    actions = kernel.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="write a KernelUpgraded marker to every journal partition")
    up.add_argument("--to-version", type=int, required=True, metavar="N")
    up.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    up.set_defaults(run=_upgrade)


def _upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.client._producer import DeliveringProducer, producer_config
    from aosk.endpoints import resolve_endpoints
    from aosk.events import KernelUpgraded, encode
    from aosk.journal import JournalReader
    from aosk.kernel import VERSIONS

    ep = resolve_endpoints(settings)
    if args.to_version not in VERSIONS:
        print(f"warning: this AOSK does not know fold version {args.to_version} (known: {sorted(VERSIONS)}); "
              "workers and projectors running this code will stop every partition at the marker")
    if not args.yes:
        print("re-run with --yes to write the markers")
        return 2
    with JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
        partitions = reader.partitions()
    producer = DeliveringProducer(producer_config(ep.bootstrap, client_id="aosk-kernel-upgrade"))
    futures = []
    for p in range(partitions):
        marker = KernelUpgraded(event_id=str(uuid.uuid4()), agent_id=f"~p{p}", tenant_id="~kernel",
                                occurred_at=time.time_ns() // 1000, origin="kernel", fold_version=args.to_version)
        futures.append(producer.produce(settings.kafka.journal_topic, key=None, value=encode(marker), partition=p))
    producer.close()
    for f in futures:
        d = f.result(0)
        print(f"KernelUpgraded(fold_version={args.to_version}) at {d.partition}:{d.offset}")
    return 0
