"""``aosk task submit | status | cancel | watch | list``: agents' tasks.

Writes go onto the journal with the SDK (``KernelClient.submit_task`` / ``cancel_task``);
reads come from the ``tasks`` projection (``aosk.reads.tasks``), so the projectors must be
running for ``status``, ``watch`` and ``submit --wait``. ``watch`` (and ``submit --wait``)
exit 0 when the task succeeded, 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from aosk.cli._flags import add_agent, add_format, add_schema, add_tenant, positive_int
from aosk.config import Settings
from aosk.errors import AoskError, ProjectionTimeout

if TYPE_CHECKING:
    from aosk.client import ProjectionReader
    from aosk.reads.tasks import TaskView

EXIT_SUCCEEDED = 0
EXIT_NOT_SUCCEEDED = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.reads.tasks import TASK_STATUSES

    task = sub.add_parser("task", help="agents' tasks: submit, follow, cancel")
    actions = task.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("submit", help="give an agent a task (TaskSubmitted)")
    s.add_argument("agent", metavar="AGENT")
    s.add_argument("text", metavar="TEXT", help="what the agent is asked to do")
    s.add_argument("--task-id", metavar="ID", help="the task's id (default: a new UUID)")
    add_tenant(s, help="the agent's tenant (default: read from the projection)")
    s.add_argument("--wait", action="store_true",
                   help="follow the task until it ends, like `aosk task watch` (exit 0 succeeded, 1 not)")
    _add_timeout(s)
    add_schema(s)
    s.set_defaults(run=_submit)
    for name, run, what in (("status", _status, "a task as projected"),
                            ("watch", _watch, "print a task's progress until it ends (exit 0 succeeded, 1 not)"),
                            ("cancel", _cancel, "cancel a queued or running task (TaskCancelled)")):
        p = actions.add_parser(name, help=what)
        p.add_argument("task_id", metavar="TASK_ID")
        add_agent(p, help="the task's agent (needed only when several agents hold the id)")
        add_tenant(p, help="only this tenant's tasks")
        if name == "cancel":
            p.add_argument("--reason", default="", help="why, kept with the task")
        if name == "watch":
            _add_timeout(p)
        if name == "status":
            add_format(p)
        add_schema(p)
        p.set_defaults(run=run)
    ls = actions.add_parser("list", help="tasks as projected, by id")
    add_agent(ls, help="one agent's tasks")
    add_tenant(ls, help="one tenant's tasks")
    ls.add_argument("--status", choices=TASK_STATUSES, help="only tasks with this status")
    ls.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N (default %(default)s)")
    add_format(ls)
    add_schema(ls)
    ls.set_defaults(run=_list)


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="give up after this long, exit 1 (default 0: wait until the task ends)")


def _reader(settings: Settings, schema: str) -> ProjectionReader:
    from aosk.client import ProjectionReader
    from aosk.endpoints import resolve_endpoints

    ep = resolve_endpoints(settings)
    return ProjectionReader(ep.dsn, schema=schema, pool_size=1, bootstrap=ep.bootstrap,
                            journal_topic=settings.kafka.journal_topic)


def _find(reader: ProjectionReader, args: argparse.Namespace) -> TaskView | None:
    import psycopg

    try:
        return reader.task(args.task_id, tenant_id=args.tenant, agent_id=args.agent)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
        raise AoskError(f"schema {reader.schema} has no tasks table; run `aosk db migrate` (projectors do it at "
                        "start) and `aosk project`") from e


def _must_find(reader: ProjectionReader, args: argparse.Namespace) -> TaskView:
    found = _find(reader, args)
    if found is None:
        raise AoskError(f"no task {args.task_id} in the projection{_scope(args)}; is the id right, and are "
                        "projectors running (`aosk project`)?")
    return found


def _scope(args: argparse.Namespace) -> str:
    parts = [f"agent {args.agent}" if args.agent else "", f"tenant {args.tenant}" if args.tenant else ""]
    return f" (of {', '.join(p for p in parts if p)})" if any(parts) else ""


def _line(v: TaskView) -> str:
    counters = f"turns {v.turns or 0}, model calls {v.model_calls or 0}, tool calls {v.tool_calls or 0}, " \
               f"tokens {v.tokens or 0}"
    return f"{v.task_id} on {v.agent_id}: {v.status} ({counters})"


def _ending(v: TaskView) -> str:
    if v.status == "succeeded":
        return f"output: {v.output}"
    why = ": ".join(x for x in (v.reason, v.message) if x)
    return f"{v.status}: {why}" if why else v.status


def _status(settings: Settings, args: argparse.Namespace) -> int:
    with _reader(settings, args.schema) as reader:
        v = _must_find(reader, args)
    if args.format == "json":
        print(json.dumps(v.to_json(), ensure_ascii=False))
        return 0
    print(_line(v))
    for name in ("submitted_at", "started_at", "ended_at"):
        at = getattr(v, name)
        if at is not None:
            print(f"  {name.replace('_at', ''):<9} {at.isoformat()}")
    print(f"  input     {v.input}")
    if v.ended:
        print(f"  {_ending(v)}")
    return 0


def follow(reader: ProjectionReader, args: argparse.Namespace, *, timeout: float) -> int:
    """Print a line each time the task's status or counters change until it ends: 0 if it
    succeeded, 1 if it failed or was cancelled; ``ProjectionTimeout`` after ``timeout`` (0: none)."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    shown = None
    while True:
        v = _find(reader, args)
        if v is not None:
            now = (v.status, v.turns, v.model_calls, v.tool_calls, v.tokens)
            if now != shown:
                shown = now
                print(f"{time.strftime('%H:%M:%S')} {_line(v)}", flush=True)
            if v.ended:
                print(_ending(v), flush=True)
                return EXIT_SUCCEEDED if v.status == "succeeded" else EXIT_NOT_SUCCEEDED
        if deadline is not None and time.monotonic() >= deadline:
            seen = "not in the projection" if v is None else f"still {v.status}"
            raise ProjectionTimeout(f"task {args.task_id} is {seen} after {timeout:g}s; `aosk task watch "
                                    f"{args.task_id}` follows it on")
        time.sleep(0.25)


def _watch(settings: Settings, args: argparse.Namespace) -> int:
    with _reader(settings, args.schema) as reader:
        return follow(reader, args, timeout=args.timeout)


def _tenant_of(reader: ProjectionReader, agent: str) -> str:
    view = reader.agent_state(agent)
    if view is None or view.tenant_id is None:
        raise AoskError(f"agent {agent} is not in the projection; give --tenant (or start `aosk project`)")
    return view.tenant_id


def _submit(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.client import KernelClient
    from aosk.reads.tasks import submission_verdict

    with _reader(settings, args.schema) as reader:
        tenant = args.tenant or _tenant_of(reader, args.agent)
        with KernelClient.from_settings(settings, client_id="aosk-task") as kernel:
            pending = kernel.submit_task(args.agent, args.text, tenant_id=tenant, task_id=args.task_id)
            d = pending.result()
        task_id = pending.event.task_id  # type: ignore[attr-defined]  # a TaskSubmitted
        print(f"task {task_id} submitted to {args.agent} at {d.partition}:{d.offset}", flush=True)
        if not args.wait:
            return 0
        reader.wait_for(d, timeout=args.timeout or 60.0)
        from aosk.cli.db import _connect

        with _connect(settings) as conn:
            verdict = submission_verdict(conn, reader.schema, d.partition, d.offset)
        if verdict is not None and verdict[0] != "accepted":
            print(f"rejected: {verdict[1]}: {verdict[2]}", file=sys.stderr)
            return EXIT_NOT_SUCCEEDED
        args.task_id, args.agent, args.tenant = task_id, args.agent, tenant
        return follow(reader, args, timeout=args.timeout)


def _cancel(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.client import KernelClient

    with _reader(settings, args.schema) as reader:
        v = _must_find(reader, args)
    if v.ended:
        raise AoskError(f"task {v.task_id} on {v.agent_id} already ended ({v.status}); nothing to cancel")
    if v.tenant_id is None:
        raise AoskError(f"task {v.task_id} has no tenant in the projection")
    with KernelClient.from_settings(settings, client_id="aosk-task") as kernel:
        pending = kernel.cancel_task(v.agent_id, v.task_id, args.reason, tenant_id=v.tenant_id)
        d = pending.result()
    print(f"TaskCancelled {pending.event_id} for {v.task_id} on {v.agent_id} at {d.partition}:{d.offset}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    with _reader(settings, args.schema) as reader:
        try:
            found = reader.tasks(tenant_id=args.tenant, agent_id=args.agent, status=args.status, limit=args.limit)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
            raise AoskError(f"schema {reader.schema} has no tasks table; run `aosk db migrate`") from e
    for v in found:
        if args.format == "json":
            print(json.dumps(v.to_json(), ensure_ascii=False))
        else:
            print(_line(v))
    if not found and args.format == "text":
        print("no tasks" + _scope(args))
    return 0


__all__ = ["follow", "register"]
