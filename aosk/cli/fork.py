"""``aosk fork AGENT --at-seq N``: a new agent starting from AGENT's state at seq N."""

from __future__ import annotations

import argparse

from aosk.cli._flags import add_tenant
from aosk.config import Settings
from aosk.errors import AoskError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fork", help="fork an agent from any point of its history")
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("--at-seq", type=int, required=True, metavar="N", help="the source's state after its N-th record")
    p.add_argument("--new-id", metavar="ID", help="id of the new agent (default: AGENT-fork-<random>)")
    add_tenant(p, help="the source's tenant (default: read from the projection)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait this long for the kernel's verdicts (0: do not wait)")
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.client import KernelClient, ProjectionReader
    from aosk.kernel import derived_event_id

    tenant = args.tenant
    if tenant is None:
        with ProjectionReader.from_settings(settings) as reader:
            view = reader.agent_state(args.agent)
        if view is None or view.tenant_id is None:
            raise AoskError(f"agent {args.agent} is not in the projection; give --tenant")
        tenant = view.tenant_id
    with KernelClient.from_settings(settings, watch_verdicts=args.wait > 0) as kernel:
        pending = kernel.fork(args.agent, tenant_id=tenant, at_seq=args.at_seq, new_agent_id=args.new_id)
        d = pending.result()
        new_id = pending.event.new_agent_id  # type: ignore[attr-defined]  # kernel.fork sends a ForkRequested
        print(f"ForkRequested {pending.event_id} at {d.partition}:{d.offset}: {args.agent}@{args.at_seq} -> {new_id}")
        if args.wait <= 0:
            return 0
        v = kernel.wait_for_verdict(pending.event_id, args.wait)
        if v.verdict != "accepted":
            print(f"rejected: {v.reason}: {v.message}")
            return 1
        forked = kernel.wait_for_verdict(derived_event_id("AgentForked", pending.event_id, d.partition, d.offset),
                                         args.wait)
        print(f"AgentForked on {forked.agent_id}: {forked.verdict} ({forked.reason}), status {forked.status}, "
              f"state hash {forked.state_hash.hex()[:16]}...")
        return 0 if forked.verdict == "accepted" else 1
