"""``aosk runtime``: run agents (model and tool calls as journal events). Start it N times to scale."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aosk.cli._flags import add_log_level, add_metrics_port, add_schema, configure_logging
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "runtime",
        help="run the agents of the journal: tasks, model calls and tool calls, every step an event",
        description="Join the runtime consumer group (runtime.group_id), fold the agents of the partitions this "
        "process owns, and run them: for each agent whose state has a next step, write the request, call the model "
        "(llm.base_url; the dev stack's stand-in by default) or the tool (in a worker process), and write the "
        "completion. Run several to scale; a killed one is replaced by the next owner of its partitions, which "
        "performs open calls again with the same call id (docs/runtime.md).",
    )
    add_schema(p)
    add_metrics_port(p)
    add_log_level(p, default="info")
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if args.metrics_port is not None:
        from aosk.metrics import serve
        from aosk.status import readiness

        serve(args.metrics_port, role="runtime", readiness=readiness(settings, schema=args.schema))
    return asyncio.run(_main(settings, args.schema))


async def _main(settings: Settings, schema: str) -> int:
    from aosk.runtime.models import provider_from_settings
    from aosk.runtime.runtime import Runtime
    from aosk.runtime.tools import ToolRegistry

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with provider_from_settings(settings) as provider:
        runtime = Runtime(settings, provider=provider, registry=ToolRegistry.discover(), schema=schema)
        await runtime.run(stop)
    return 0
