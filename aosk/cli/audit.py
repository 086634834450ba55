"""``aosk audit verify``: check every audit chain and the rows people query against it;
with ``--against-journal``, the audit log against the journal too."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aosk.cli._flags import add_agent, add_no_progress, add_schema
from aosk.config import Settings

if TYPE_CHECKING:
    from aosk.reads.audit import Break

_SHOWN = 20
"""Breaks printed (the first, then this many more at most)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser(
        "verify",
        help="recompute every hash chain and check agent_state, checkpoints and memories against it; "
             "exit 1 naming the first break",
    )
    add_agent(v, help="only this agent's chain and rows")
    add_schema(v)
    v.add_argument("--against-journal", action="store_true",
                   help="also read the journal up to the projected offsets and check every record has its audit "
                        "row with the same record hash (finds agents deleted from every table)")
    v.add_argument("--refold", action="store_true",
                   help="with --against-journal: also fold the journal and compare every agent_state and checkpoint "
                        "state with the fold's (at the fold's speed)")
    add_no_progress(v)
    v.set_defaults(run=_verify)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.cli.db import connect_schema
    from aosk.reads.audit import verify

    with connect_schema(settings, args.schema) as conn:
        res = verify(conn, args.schema, agent_id=args.agent)
    scope = f"agent {args.agent}" if args.agent else f"{res.agents} agents"
    if not res.ok:
        return _broken("audit chain BROKEN", res.breaks)
    if args.agent and res.rows == 0:
        print(f"agent {args.agent} has no audit rows", file=sys.stderr)
        return 1
    extra = (f"; {res.refused} records whose rows PostgreSQL refused (see view refused_records)"
             if res.refused else "")
    print(f"audit chains intact: {scope}, {res.rows} rows, agent_state, checkpoints and memories match{extra}")
    if args.against_journal or args.refold:
        return _against_journal(settings, args)
    return 0


def _against_journal(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from aosk.cli.db import _connect
    from aosk.endpoints import resolve_endpoints
    from aosk.journal import JournalReader
    from aosk.projectors.audit_journal import verify_against_journal

    ep = resolve_endpoints(settings)
    bar = tqdm(unit="rec", unit_scale=True, desc="journal", file=sys.stderr, disable=args.no_progress,
               mininterval=0.5, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        with _connect(settings) as conn, JournalReader(ep.bootstrap, settings.kafka.journal_topic) as reader:
            res = verify_against_journal(conn, args.schema, reader, refold=args.refold, progress=progress)
    finally:
        bar.close()
    if not res.ok:
        return _broken("audit log DIFFERS from the journal", res.breaks)
    folded = "; every agent_state and checkpoint state is the fold's" if args.refold else ""
    print(f"journal matches: {res.rows} records up to the projected offsets each have their audit row{folded}")
    return 0


def _broken(what: str, breaks: list[Break]) -> int:
    first = breaks[0]
    print(f"{what} at {first}", file=sys.stderr)
    for b in breaks[1:1 + _SHOWN]:
        print(f"  also: {b}", file=sys.stderr)
    if len(breaks) > 1 + _SHOWN:
        print(f"  ... {len(breaks) - 1 - _SHOWN} more", file=sys.stderr)
    return 1
