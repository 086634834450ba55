"""Built-in kernel tools: what an agent asks of the kernel itself, run by the runtime.

``recall`` (memory search for the agent), ``remember`` (a memory embedded by the
provider), ``send_message`` (IPC) and ``spawn_child``. Unlike registry tools they do not
run in a worker process: each writes the kernel event it stands for (``MemoryRecalled``,
``MemoryStored``, ``MessageSent``, ``SpawnRequested``) on the agent's key, and the fold
judges it like any other. As for every tool the call id is the idempotency key: the
event id derives from it, and the event is written with client origin so the fold's
dedupe memory recognises a call performed again after a crash (``duplicate``).

Capabilities name them like other tools: an agent without ``send_message`` in its
capabilities is never offered it, and a reply that calls it anyway is denied by the fold.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aosk.events import MemoryRecalled, MemoryStored, MessageSent, SpawnRequested
from aosk.kernel import AgentState, Kind, Verdict
from aosk.kernel.tasks import STEP_NAMESPACE

__all__ = ["KERNEL_TOOLS", "KernelToolContext", "KernelToolResult", "kernel_tool_specs"]


@dataclass(frozen=True)
class KernelToolResult:
    content: str
    """JSON text for the model."""
    error: str | None = None


Write = Callable[..., Awaitable[Verdict | None]]
"""``write(state, event class, *, event_id, origin, **fields) -> verdict``: the runtime's writer."""


@dataclass(frozen=True)
class KernelToolContext:
    state: AgentState
    call_id: str
    write: Write
    embed: Callable[[str], Awaitable[list[float]]]
    recall: Callable[[str, list[float], int], Awaitable[list[dict[str, Any]]]]
    """(agent id, query vector, k) -> the agent's nearest memories."""


def _event_id(call_id: str, what: str) -> str:
    return str(uuid.uuid5(STEP_NAMESPACE, f"kernel-tool\x00{call_id}\x00{what}"))


def _judged(v: Verdict | None, ok: dict[str, Any]) -> KernelToolResult:
    if v is None:
        return KernelToolResult(json.dumps({"error": {"kind": "unknown", "message": "the kernel did not answer in "
                                                      "time; the call may or may not have happened"}}),
                                error="timeout: no verdict")
    if v.kind == Kind.REJECTED:
        return KernelToolResult(json.dumps({"error": {"kind": v.reason, "message": v.message}}),
                                error=f"{v.reason}: {v.message}"[:1000])
    return KernelToolResult(json.dumps({**ok, "verdict": v.kind}))


async def _remember(ctx: KernelToolContext, args: Mapping[str, Any]) -> KernelToolResult:
    text = str(args.get("text", ""))
    importance = float(args.get("importance", 0.5))
    if not text:
        return KernelToolResult(json.dumps({"error": {"kind": "invalid_arguments", "message": "text is empty"}}),
                                error="invalid_arguments: text is empty")
    importance = min(1.0, max(0.0, importance))
    vector = await ctx.embed(text)
    memory_id = _event_id(ctx.call_id, "memory")
    v = await ctx.write(ctx.state, MemoryStored, event_id=_event_id(ctx.call_id, "event"), origin="client",
                        memory_id=memory_id, text=text, embedding=tuple(vector), importance=importance,
                        metadata={"source": "remember", "call_id": ctx.call_id})
    return _judged(v, {"memory_id": memory_id})


async def _recall(ctx: KernelToolContext, args: Mapping[str, Any]) -> KernelToolResult:
    query = str(args.get("query", ""))
    k = int(args.get("k", 5))
    k = min(20, max(1, k))
    vector = await ctx.embed(query)
    found = await ctx.recall(ctx.state.agent_id, vector, k)
    ids = tuple(str(m["memory_id"]) for m in found)
    query_hash = hashlib.sha256(query.encode()).hexdigest()[:32]
    v = await ctx.write(ctx.state, MemoryRecalled, event_id=_event_id(ctx.call_id, "event"), origin="client",
                        query_hash=query_hash, memory_ids=ids)
    return _judged(v, {"memories": found})


async def _send_message(ctx: KernelToolContext, args: Mapping[str, Any]) -> KernelToolResult:
    to = str(args.get("to_agent_id", ""))
    body = str(args.get("body", ""))
    message_id = _event_id(ctx.call_id, "message")
    v = await ctx.write(ctx.state, MessageSent, event_id=_event_id(ctx.call_id, "event"), origin="client",
                        message_id=message_id, to_agent_id=to, body=body)
    return _judged(v, {"message_id": message_id, "to_agent_id": to})


async def _spawn_child(ctx: KernelToolContext, args: Mapping[str, Any]) -> KernelToolResult:
    st = ctx.state
    child = str(args.get("child_id", "")) or f"{st.agent_id}.child-{ctx.call_id[:8]}"
    name = str(args.get("name", "")) or child
    assert st.budgets is not None and st.identity is not None
    v = await ctx.write(st, SpawnRequested, event_id=_event_id(ctx.call_id, "event"), origin="client",
                        child_id=child, name=name, priority=st.identity.priority,
                        capabilities=st.capabilities.names, budgets=st.budgets,
                        metadata={"spawned_by_call": ctx.call_id})
    return _judged(v, {"child_id": child})


def _spec(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}


_Handler = Callable[[KernelToolContext, Mapping[str, Any]], Awaitable[KernelToolResult]]

KERNEL_TOOLS: Final[Mapping[str, tuple[dict[str, Any], _Handler]]] = {
    "recall": (_spec("recall", "Search this agent's memories (stored and paged-out context) by meaning.",
                     {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 20}},
                     ["query"]), _recall),
    "remember": (_spec("remember", "Store a memory for later recall.",
                       {"text": {"type": "string"}, "importance": {"type": "number", "minimum": 0, "maximum": 1}},
                       ["text"]), _remember),
    "send_message": (_spec("send_message", "Send a message to another agent of the same tenant.",
                           {"to_agent_id": {"type": "string"}, "body": {"type": "string"}},
                           ["to_agent_id", "body"]), _send_message),
    "spawn_child": (_spec("spawn_child", "Spawn a child agent with this agent's capabilities and budgets.",
                          {"child_id": {"type": "string"}, "name": {"type": "string"}}, ["child_id"]),
                    _spawn_child),
}


def kernel_tool_specs(capabilities: tuple[str, ...]) -> list[dict[str, Any]]:
    """The OpenAI tool specs of the kernel tools in ``capabilities``."""
    return [KERNEL_TOOLS[c][0] for c in capabilities if c in KERNEL_TOOLS]
