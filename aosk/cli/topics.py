"""``aosk topics ensure``: create the journal, verdict and dead-letter topics, or check them.
A journal it creates gets the latest fold version's marker on every partition."""

from __future__ import annotations

import argparse

from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.topics import ensure_topics


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    topics = sub.add_parser("topics", help="the Kafka topics AOSK owns")
    actions = topics.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "ensure", help="create missing topics; say which settings of existing ones differ"
    ).set_defaults(run=_ensure)


def _ensure(settings: Settings, args: argparse.Namespace) -> int:
    result = ensure_topics(resolve_endpoints(settings).bootstrap, settings.kafka, mark_new_journal=True)
    for name in result.created:
        print(f"created  {name}")
    for name in result.existing:
        print(f"ok       {name}")
    if result.markers:
        from aosk.kernel import LATEST_VERSION

        print(f"marked   {settings.kafka.journal_topic}: KernelUpgraded(fold_version={LATEST_VERSION}, "
              f"partitions={len(result.markers)}) on every partition")
    return 0
