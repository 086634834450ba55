"""``aosk audit verify``: check every audit chain against agent_state."""

from __future__ import annotations

import argparse
import sys

from aosk.cli._flags import add_agent, add_schema
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser(
        "verify",
        help="recompute every hash chain and compare each head with agent_state; exit 1 naming the first break",
    )
    add_agent(v, help="only this agent's chain")
    add_schema(v)
    v.set_defaults(run=_verify)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.cli.db import connect_schema
    from aosk.projectors.audit import verify

    with connect_schema(settings, args.schema) as conn:
        res = verify(conn, args.schema, agent_id=args.agent)
    scope = f"agent {args.agent}" if args.agent else f"{res.agents} agents"
    if res.ok:
        if args.agent and res.rows == 0:
            print(f"agent {args.agent} has no audit rows", file=sys.stderr)
            return 1
        extra = (f"; {res.refused} records whose rows PostgreSQL refused (see view refused_records)"
                 if res.refused else "")
        print(f"audit chains intact: {scope}, {res.rows} rows{extra}")
        return 0
    first = res.first
    assert first is not None
    print(f"audit chain BROKEN at agent {first.agent_id} seq {first.seq}: {first.problem}", file=sys.stderr)
    for b in res.breaks[1:20]:
        print(f"  also: {b}", file=sys.stderr)
    if len(res.breaks) > 20:
        print(f"  ... {len(res.breaks) - 20} more", file=sys.stderr)
    return 1
