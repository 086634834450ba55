"""Decoding canonical state bytes back into an ``AgentState``.

Strict on purpose: the bytes come from checkpoints, worker snapshots and ``AgentForked``
records, and a state that decodes must re-encode to exactly the same bytes (so its hash
is the hash that was carried). Anything else raises ``StateDecodeError``.
"""

from __future__ import annotations

import json
from typing import Any

from aosk.errors import AoskError, StateDecodeError
from aosk.events import Budgets
from aosk.kernel.paging import make_entry
from aosk.kernel.params import params_for
from aosk.kernel.state import (
    ALL_STATUSES,
    EMPTY_QUOTA,
    EMPTY_TASKS,
    AgentState,
    Calls,
    Capabilities,
    Counters,
    Dedupe,
    Identity,
    Inbox,
    InboxMessage,
    Life,
    OpenCall,
    Quota,
    Task,
    Tasks,
    TaskTool,
    Usage,
    Window,
    encode_state,
)

__all__ = ["StateDecodeError", "decode_state", "budgets_from_plain"]


def _fail(msg: str) -> StateDecodeError:
    return StateDecodeError(f"not a canonical fold state: {msg}")


def _reject_constant(name: str) -> Any:
    raise _fail(f"{name} is not allowed")


def _obj(v: Any, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if type(v) is not dict or set(v) != set(keys):
        raise _fail(f"{what} must be an object with keys {sorted(keys)}")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise _fail(f"{what} must be an integer")
    return v


def _oint(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _fail(f"{what} must be a string")
    return v


def _ostr(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _list(v: Any, what: str) -> list[Any]:
    if type(v) is not list:
        raise _fail(f"{what} must be an array")
    return v


_BUDGET_KEYS: tuple[str, ...] = ("context_window_tokens", "max_steps", "max_tokens", "max_tool_calls")
_QUOTA_KEYS: tuple[str, ...] = ("calls_per_hour", "quota_window_ms", "tokens_per_hour", "tokens_per_request")


def budgets_from_plain(v: Any) -> Budgets:
    quotas = type(v) is dict and "quota_window_ms" in v  # Budgets v2's window quotas, written only when set
    d = _obj(v, _BUDGET_KEYS + _QUOTA_KEYS if quotas else _BUDGET_KEYS, "budgets")
    return Budgets(
        max_tokens=_int(d["max_tokens"], "budgets.max_tokens"),
        max_tool_calls=_int(d["max_tool_calls"], "budgets.max_tool_calls"),
        max_steps=_int(d["max_steps"], "budgets.max_steps"),
        context_window_tokens=_int(d["context_window_tokens"], "budgets.context_window_tokens"),
        tokens_per_hour=_int(d.get("tokens_per_hour", 0), "budgets.tokens_per_hour"),
        calls_per_hour=_int(d.get("calls_per_hour", 0), "budgets.calls_per_hour"),
        tokens_per_request=_int(d.get("tokens_per_request", 0), "budgets.tokens_per_request"),
        quota_window_ms=_int(d.get("quota_window_ms", 0), "budgets.quota_window_ms"),
    )


def _task(v: Any) -> Task:
    d = _obj(v, ("attempt", "input", "model_calls", "output", "started", "submitted_seq", "task_id", "tokens",
                 "tool_calls", "tools", "turn", "turn_state"), "task")
    if type(d["started"]) is not bool:
        raise _fail("task.started must be a boolean")
    tools = []
    for x in _list(d["tools"], "task.tools"):
        t = _obj(x, ("arguments", "call_id", "state", "tool"), "task tool")
        tools.append(TaskTool(call_id=_str(t["call_id"], "call_id"), tool=_str(t["tool"], "tool"),
                              arguments=_str(t["arguments"], "arguments"), state=_str(t["state"], "state")))
    return Task(
        task_id=_str(d["task_id"], "task_id"), input=_str(d["input"], "input"),
        submitted_seq=_int(d["submitted_seq"], "submitted_seq"), started=d["started"],
        turn=_int(d["turn"], "turn"), attempt=_int(d["attempt"], "attempt"),
        turn_state=_str(d["turn_state"], "turn_state"), tools=tuple(tools), output=_ostr(d["output"], "output"),
        tokens=_int(d["tokens"], "tokens"), model_calls=_int(d["model_calls"], "model_calls"),
        tool_calls=_int(d["tool_calls"], "tool_calls"),
    )


def _str_pairs(v: Any, what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for p in _list(v, what):
        if type(p) is not list or len(p) != 2:
            raise _fail(f"{what} must hold pairs")
        out.append((_str(p[0], what), _str(p[1], what)))
    return tuple(out)


def _tasks(v: Any) -> Tasks:
    if v is None:
        return EMPTY_TASKS
    d = _obj(v, ("ended", "queue"), "tasks")
    return Tasks(queue=tuple(_task(x) for x in _list(d["queue"], "tasks.queue")),
                 ended=_str_pairs(d["ended"], "tasks.ended"))


def _quota(v: Any) -> Quota:
    if v is None:
        return EMPTY_QUOTA
    d = _obj(v, ("calls", "tokens", "window"), "quota")
    return Quota(window=_int(d["window"], "quota.window"), tokens=_int(d["tokens"], "quota.tokens"),
                 calls=_int(d["calls"], "quota.calls"))


def _identity(v: Any) -> Identity | None:
    if v is None:
        return None
    d = _obj(
        v,
        ("fork_seq", "forked_from", "metadata", "name", "parent_id", "priority", "spawned_at_ms", "tenant_id"),
        "identity",
    )
    md = d["metadata"]
    if type(md) is not dict:
        raise _fail("identity.metadata must be an object")
    return Identity(
        tenant_id=_str(d["tenant_id"], "identity.tenant_id"),
        parent_id=_ostr(d["parent_id"], "identity.parent_id"),
        name=_str(d["name"], "identity.name"),
        priority=_int(d["priority"], "identity.priority"),
        metadata=tuple(sorted((_str(k, "metadata key"), _str(x, "metadata value")) for k, x in md.items())),
        spawned_at_ms=_int(d["spawned_at_ms"], "identity.spawned_at_ms"),
        forked_from=_ostr(d["forked_from"], "identity.forked_from"),
        fork_seq=_oint(d["fork_seq"], "identity.fork_seq"),
    )


def _pairs(v: Any, what: str) -> tuple[tuple[int, int], ...]:
    out = []
    for p in _list(v, what):
        if type(p) is not list or len(p) != 2:
            raise _fail(f"{what} must hold [partition, offset] pairs")
        out.append((_int(p[0], what), _int(p[1], what)))
    return tuple(out)


def decode_state(data: bytes) -> AgentState:
    """Decode canonical bytes into the state they encode; ``StateDecodeError`` otherwise."""
    try:
        d = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        if isinstance(e, StateDecodeError):
            raise
        raise _fail(f"not JSON ({e})") from e
    try:
        state = _from_plain(d)
    except StateDecodeError:
        raise
    except (TypeError, ValueError, KeyError, AoskError) as e:
        raise _fail(str(e)) from e
    if encode_state(state) != data:
        raise _fail("it does not re-encode to the same bytes (not canonical)")
    return state


_STATE_KEYS: tuple[str, ...] = (
    "agent_id", "budgets", "calls", "capabilities", "counters", "dedupe", "fold_version",
    "identity", "inbox", "life", "seq", "status", "usage", "window",
)


def _from_plain(v: Any) -> AgentState:
    keys: tuple[str, ...] = _STATE_KEYS
    if type(v) is dict:  # keys present only when set: partitions (pseudo-agents), quota and tasks (version 4)
        keys = keys + tuple(k for k in ("partitions", "quota", "tasks") if k in v)
    d = _obj(v, keys, "state")
    partitions = _int(d.get("partitions", 0), "partitions")
    if partitions < 0:
        raise _fail("partitions must be >= 0")
    version = _int(d["fold_version"], "fold_version")
    params = params_for(version)
    status = _str(d["status"], "status")
    if status not in ALL_STATUSES:
        raise _fail(f"unknown status {status!r}")

    w = _list(d["window"], "window")
    entries = []
    tokens = 0
    nbytes = 0
    for x in w:
        e = _obj(x, ("content", "entry_id", "importance", "role", "seq", "tokens"), "window entry")
        if type(e["importance"]) is not float:
            raise _fail("window entry importance must be a float")
        entry = make_entry(
            entry_id=_str(e["entry_id"], "entry_id"),
            role=_str(e["role"], "role"),
            content=_str(e["content"], "content"),
            tokens=_int(e["tokens"], "tokens"),
            importance=e["importance"],
            seq=_int(e["seq"], "seq"),
            params=params,
        )
        entries.append(entry)
        tokens += entry.tokens
        nbytes += len(entry.json_bytes())

    msgs = []
    for x in _list(d["inbox"], "inbox"):
        m = _obj(
            x,
            ("body", "from_agent_id", "from_tenant_id", "message_id", "seq", "source_offset", "source_partition"),
            "inbox message",
        )
        msgs.append(
            InboxMessage(
                message_id=_str(m["message_id"], "message_id"),
                from_agent_id=_str(m["from_agent_id"], "from_agent_id"),
                from_tenant_id=_str(m["from_tenant_id"], "from_tenant_id"),
                body=_str(m["body"], "body"),
                source_partition=_int(m["source_partition"], "source_partition"),
                source_offset=_int(m["source_offset"], "source_offset"),
                seq=_int(m["seq"], "seq"),
            )
        )

    calls_v = d["calls"]
    c = _obj(calls_v, ("abandoned", "open", "timed_out") if type(calls_v) is dict and "abandoned" in calls_v
             else ("open", "timed_out"), "calls")
    opened = []
    for x in _list(c["open"], "calls.open"):
        in_task = type(x) is dict and "task_id" in x
        o = _obj(x, ("call_id", "deadline_ms", "entry_ids", "kind", "request_event_id", "task_id") if in_task
                 else ("call_id", "deadline_ms", "kind", "request_event_id"), "open call")
        opened.append(
            OpenCall(
                call_id=_str(o["call_id"], "call_id"),
                kind=_str(o["kind"], "kind"),
                deadline_ms=_int(o["deadline_ms"], "deadline_ms"),
                request_event_id=_str(o["request_event_id"], "request_event_id"),
                task_id=_str(o["task_id"], "task_id") if in_task else None,
                entry_ids=tuple(_str(e, "entry_id") for e in _list(o["entry_ids"], "entry_ids")) if in_task else (),
            )
        )

    dd = _obj(d["dedupe"], ("bounce_hwm", "delivery_hwm", "event_ids"), "dedupe")
    u = _obj(d["usage"], ("steps", "tokens", "tool_calls"), "usage")
    ct = _obj(
        d["counters"],
        (
            "children_requested", "memories_forgotten", "memories_stored", "messages_bounced",
            "messages_received", "messages_sent",
        ),
        "counters",
    )
    lf = _obj(
        d["life"],
        ("error", "exit_code", "exit_reason", "killed_by", "signal", "suspend_reason", "waiting_on"),
        "life",
    )
    return AgentState(
        agent_id=_str(d["agent_id"], "agent_id"),
        fold_version=version,
        seq=_int(d["seq"], "seq"),
        status=status,
        identity=_identity(d["identity"]),
        budgets=None if d["budgets"] is None else budgets_from_plain(d["budgets"]),
        usage=Usage(
            tokens=_int(u["tokens"], "usage.tokens"),
            tool_calls=_int(u["tool_calls"], "usage.tool_calls"),
            steps=_int(u["steps"], "usage.steps"),
        ),
        capabilities=Capabilities(
            names=tuple(_str(x, "capability") for x in _list(d["capabilities"], "capabilities"))
        ),
        counters=Counters(
            children_requested=_int(ct["children_requested"], "counters.children_requested"),
            memories_forgotten=_int(ct["memories_forgotten"], "counters.memories_forgotten"),
            memories_stored=_int(ct["memories_stored"], "counters.memories_stored"),
            messages_bounced=_int(ct["messages_bounced"], "counters.messages_bounced"),
            messages_received=_int(ct["messages_received"], "counters.messages_received"),
            messages_sent=_int(ct["messages_sent"], "counters.messages_sent"),
        ),
        life=Life(
            error=_ostr(lf["error"], "life.error"),
            exit_code=_oint(lf["exit_code"], "life.exit_code"),
            exit_reason=_ostr(lf["exit_reason"], "life.exit_reason"),
            killed_by=_ostr(lf["killed_by"], "life.killed_by"),
            signal=_ostr(lf["signal"], "life.signal"),
            suspend_reason=_ostr(lf["suspend_reason"], "life.suspend_reason"),
            waiting_on=_ostr(lf["waiting_on"], "life.waiting_on"),
        ),
        window=Window(entries=tuple(entries), tokens=tokens, nbytes=nbytes),
        inbox=Inbox(messages=tuple(msgs), nbytes=sum(len(m.json_bytes()) for m in msgs)),
        calls=Calls(
            open=tuple(opened),
            timed_out=tuple(_str(x, "timed_out") for x in _list(c["timed_out"], "calls.timed_out")),
            abandoned=_str_pairs(c.get("abandoned", []), "calls.abandoned"),
        ),
        tasks=_tasks(d.get("tasks")),
        quota=_quota(d.get("quota")),
        dedupe=Dedupe(
            event_ids=tuple(_str(x, "event id") for x in _list(dd["event_ids"], "dedupe.event_ids")),
            delivery_hwm=_pairs(dd["delivery_hwm"], "dedupe.delivery_hwm"),
            bounce_hwm=_pairs(dd["bounce_hwm"], "dedupe.bounce_hwm"),
        ),
        partitions=partitions,
    )
