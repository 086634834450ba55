"""``aosk topics ensure``: create the journal, verdict and dead-letter topics, or check them."""

from __future__ import annotations

import argparse

from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.topics import ensure_topics


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    topics = sub.add_parser("topics", help="the Kafka topics AOSK owns")
    actions = topics.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "ensure", help="create missing topics; say which settings of existing ones differ"
    ).set_defaults(run=_ensure)


def _ensure(settings: Settings, args: argparse.Namespace) -> int:
    result = ensure_topics(resolve_endpoints(settings).bootstrap, settings.kafka)
    for name in result.created:
        print(f"created  {name}")
    for name in result.existing:
        print(f"ok       {name}")
    return 0
