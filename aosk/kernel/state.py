"""The fold's state: one immutable ``AgentState`` per agent key, and its canonical bytes.

Everything in an ``AgentState`` is inside the hash: ``state_hash(s)`` is exactly
``sha256(encode_state(s))`` and the bytes are canonical JSON (see
``aosk.kernel.canonical``). That includes the bookkeeping that shapes future verdicts
(``seq``, the dedupe memory of recent client event ids and the per-partition delivery
high-water marks). What is only bookkeeping for the process folding (the last applied
offset, recent verdicts) lives beside the state in ``aosk.kernel.slot.AgentSlot``.

Speed: every part of the state caches its own canonical bytes the first time they are
asked for, and the fold replaces only the parts an event changes, so encoding a state
after an event re-encodes only what changed and hashing costs one sha256 pass over the
joined bytes (about 0.5 us per KiB here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from operator import attrgetter, call
from typing import Any, Final

from aosk.events import Budgets
from aosk.kernel.canonical import jlist, jnum, jopt_str, jstr

__all__ = [
    "Status",
    "FINAL_STATUSES",
    "NON_FINAL_STATUSES",
    "AgentState",
    "Identity",
    "Capabilities",
    "Usage",
    "Counters",
    "Life",
    "ContextEntry",
    "Window",
    "InboxMessage",
    "Inbox",
    "OpenCall",
    "Calls",
    "Dedupe",
    "Task",
    "TaskTool",
    "Tasks",
    "Quota",
    "EMPTY_TASKS",
    "EMPTY_QUOTA",
    "placeholder",
    "evolve",
    "encode_state",
    "state_hash",
    "budgets_json",
]


class Status(StrEnum):
    """Agent statuses. ``NONE`` is the placeholder of a key never spawned.

    The values are in the canonical state bytes (so in every state hash) and on the wire;
    a state decoded from bytes holds the plain ``str`` value, which equals the member."""

    NONE = "NONE"
    READY = "READY"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUSPENDED = "SUSPENDED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"


FINAL_STATUSES: Final = frozenset({Status.TERMINATED, Status.ERROR})
NON_FINAL_STATUSES: Final = frozenset(
    {Status.READY, Status.RUNNING, Status.WAITING, Status.SUSPENDED}
)
ALL_STATUSES: Final = NON_FINAL_STATUSES | FINAL_STATUSES | {Status.NONE}



class _Cached:
    """Mixin: canonical JSON bytes computed once per (immutable) instance."""

    __slots__ = ()
    _json: bytes | None  # a slot of every subclass (declared here for the type checker only)

    def _encode(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def json_bytes(self) -> bytes:
        b = self._json
        if b is None:
            b = self._encode().encode("utf-8")
            object.__setattr__(self, "_json", b)
        return b


def budgets_json(b: Budgets | None) -> str:
    if b is None:
        return "null"
    if b.tokens_per_hour or b.calls_per_hour or b.tokens_per_request or b.quota_window_ms:
        # The window quotas (Budgets v2) are in the bytes only when one is set, so every
        # state without them keeps the bytes and the hash it had before they existed.
        return (
            f'{{"calls_per_hour":{b.calls_per_hour},"context_window_tokens":{b.context_window_tokens},'
            f'"max_steps":{b.max_steps},"max_tokens":{b.max_tokens},"max_tool_calls":{b.max_tool_calls},'
            f'"quota_window_ms":{b.quota_window_ms},"tokens_per_hour":{b.tokens_per_hour},'
            f'"tokens_per_request":{b.tokens_per_request}}}'
        )
    return (
        f'{{"context_window_tokens":{b.context_window_tokens},"max_steps":{b.max_steps},'
        f'"max_tokens":{b.max_tokens},"max_tool_calls":{b.max_tool_calls}}}'
    )


# --- parts ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity(_Cached):
    """Who the agent is: set by ``AgentSpawned`` / ``AgentForked``, never changed after."""

    tenant_id: str
    parent_id: str | None
    name: str
    priority: int
    metadata: tuple[tuple[str, str], ...]
    """Sorted (key, value) pairs."""
    spawned_at_ms: int
    """Broker timestamp of the spawning (or forking) record."""
    forked_from: str | None = None
    fork_seq: int | None = None
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        md = "{" + ",".join(f"{jstr(k)}:{jstr(v)}" for k, v in self.metadata) + "}"
        return (
            f'{{"fork_seq":{"null" if self.fork_seq is None else self.fork_seq},'
            f'"forked_from":{jopt_str(self.forked_from)},"metadata":{md},'
            f'"name":{jstr(self.name)},"parent_id":{jopt_str(self.parent_id)},'
            f'"priority":{self.priority},"spawned_at_ms":{self.spawned_at_ms},'
            f'"tenant_id":{jstr(self.tenant_id)}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities(_Cached):
    """The set of tools an agent may call (sorted, unique)."""

    names: tuple[str, ...] = ()
    _set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", frozenset(self.names))

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def __len__(self) -> int:
        return len(self.names)

    def issuperset(self, names: tuple[str, ...] | frozenset[str]) -> bool:
        return self._set.issuperset(names)

    def _encode(self) -> str:
        return jlist([jstr(n) for n in self.names])


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage(_Cached):
    """What the agent has consumed (may exceed a lowered limit; remaining floors at 0)."""

    tokens: int = 0
    tool_calls: int = 0
    steps: int = 0
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return f'{{"steps":{self.steps},"tokens":{self.tokens},"tool_calls":{self.tool_calls}}}'


@dataclass(frozen=True, kw_only=True, slots=True)
class Counters(_Cached):
    """Plain counts, for queries and metrics."""

    children_requested: int = 0
    memories_forgotten: int = 0
    memories_stored: int = 0
    """Memories stored, paged-out context entries included."""
    messages_bounced: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return (
            f'{{"children_requested":{self.children_requested},'
            f'"memories_forgotten":{self.memories_forgotten},'
            f'"memories_stored":{self.memories_stored},'
            f'"messages_bounced":{self.messages_bounced},'
            f'"messages_received":{self.messages_received},'
            f'"messages_sent":{self.messages_sent}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Life(_Cached):
    """Notes on the current status: why suspended, what it waits on, how it ended."""

    error: str | None = None
    exit_code: int | None = None
    exit_reason: str | None = None
    killed_by: str | None = None
    signal: str | None = None
    suspend_reason: str | None = None
    waiting_on: str | None = None
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return (
            f'{{"error":{jopt_str(self.error)},'
            f'"exit_code":{"null" if self.exit_code is None else self.exit_code},'
            f'"exit_reason":{jopt_str(self.exit_reason)},"killed_by":{jopt_str(self.killed_by)},'
            f'"signal":{jopt_str(self.signal)},"suspend_reason":{jopt_str(self.suspend_reason)},'
            f'"waiting_on":{jopt_str(self.waiting_on)}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ContextEntry(_Cached):
    """One context-window entry. Paged out, it becomes the memory with the same id."""

    entry_id: str
    role: str
    content: str
    tokens: int
    importance: float
    seq: int
    """The agent ``seq`` of the ``ContextAppended`` that added it (append order)."""
    evict_key: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)
    """(importance band, seq); band == bands means pinned. Set by ``paging.make_entry``."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return (
            f'{{"content":{jstr(self.content)},"entry_id":{jstr(self.entry_id)},'
            f'"importance":{jnum(self.importance)},"role":{jstr(self.role)},'
            f'"seq":{self.seq},"tokens":{self.tokens}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Window(_Cached):
    """The context window, in append order, with its token and byte totals."""

    entries: tuple[ContextEntry, ...] = ()
    tokens: int = 0
    nbytes: int = 0
    """Sum of the entries' canonical sizes (the byte cap is checked against it)."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:  # unused: json_bytes is overridden to join bytes directly
        return self.json_bytes().decode()

    def json_bytes(self) -> bytes:
        b = self._json
        if b is None:
            b = b"[" + b",".join([e.json_bytes() for e in self.entries]) + b"]"
            object.__setattr__(self, "_json", b)
        return b


@dataclass(frozen=True, kw_only=True, slots=True)
class InboxMessage(_Cached):
    """A delivered message waiting for ``MessagesConsumed``."""

    message_id: str
    from_agent_id: str
    from_tenant_id: str
    body: str
    source_partition: int
    source_offset: int
    seq: int
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return (
            f'{{"body":{jstr(self.body)},"from_agent_id":{jstr(self.from_agent_id)},'
            f'"from_tenant_id":{jstr(self.from_tenant_id)},"message_id":{jstr(self.message_id)},'
            f'"seq":{self.seq},"source_offset":{self.source_offset},'
            f'"source_partition":{self.source_partition}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Inbox(_Cached):
    messages: tuple[InboxMessage, ...] = ()
    nbytes: int = 0
    """Sum of the messages' canonical sizes (the byte cap is checked against it)."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:  # pragma: no cover - json_bytes is overridden
        return self.json_bytes().decode()

    def json_bytes(self) -> bytes:
        b = self._json
        if b is None:
            b = b"[" + b",".join([m.json_bytes() for m in self.messages]) + b"]"
            object.__setattr__(self, "_json", b)
        return b


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenCall:
    """An LLM or tool call waiting for its completion (or ``CallTimedOut``)."""

    call_id: str
    kind: str
    """``"llm"`` or ``"tool"``."""
    deadline_ms: int
    """The request's broker timestamp + ``timeout_ms``."""
    request_event_id: str
    task_id: str | None = None
    """The task the call belongs to (fold version 4 on); None: outside any task."""
    entry_ids: tuple[str, ...] = ()
    """A task model call's prompt: the context entries it was built from (kept in the
    window while the call is open, so a re-issued call sends the same prompt)."""

    def to_json(self) -> str:
        if self.task_id is None:  # the shape (and bytes) of calls outside tasks
            return (
                f'{{"call_id":{jstr(self.call_id)},"deadline_ms":{self.deadline_ms},'
                f'"kind":{jstr(self.kind)},"request_event_id":{jstr(self.request_event_id)}}}'
            )
        return (
            f'{{"call_id":{jstr(self.call_id)},"deadline_ms":{self.deadline_ms},'
            f'"entry_ids":{jlist([jstr(e) for e in self.entry_ids])},'
            f'"kind":{jstr(self.kind)},"request_event_id":{jstr(self.request_event_id)},'
            f'"task_id":{jstr(self.task_id)}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Calls(_Cached):
    """Open calls (in request order) and the ids of recently timed-out ones."""

    open: tuple[OpenCall, ...] = ()
    timed_out: tuple[str, ...] = ()
    abandoned: tuple[tuple[str, str], ...] = ()
    """(call id, reason) of recent calls closed without a completion because their task
    ended (``task_cancelled``, ``task_ended``): a completion arriving later is rejected
    with that reason. In the bytes only when not empty."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def find(self, call_id: str) -> OpenCall | None:
        for c in self.open:
            if c.call_id == call_id:
                return c
        return None

    def abandoned_reason(self, call_id: str) -> str | None:
        for c, reason in self.abandoned:
            if c == call_id:
                return reason
        return None

    def _encode(self) -> str:
        ab = ""
        if self.abandoned:
            ab = '"abandoned":' + jlist([f"[{jstr(c)},{jstr(r)}]" for c, r in self.abandoned]) + ","
        return (
            f'{{{ab}"open":{jlist([c.to_json() for c in self.open])},'
            f'"timed_out":{jlist([jstr(c) for c in self.timed_out])}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskTool:
    """A tool call the task's last model reply asked for (its id derives from the model
    call's id and its index, never from the model's own ids)."""

    call_id: str
    tool: str
    arguments: str
    """JSON object text, as the reply gave it."""
    state: str
    """``pending`` (to request) | ``open`` (requested, accepted) | ``done`` (its result
    is in the context window) | ``denied`` (not in the capabilities: the denial is the result)."""

    def to_json(self) -> str:
        return (
            f'{{"arguments":{jstr(self.arguments)},"call_id":{jstr(self.call_id)},'
            f'"state":{jstr(self.state)},"tool":{jstr(self.tool)}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Task(_Cached):
    """A queued or running task (fold version 4 on). The head of the queue runs once
    ``started`` (its input is then a context entry); the others wait their turn."""

    task_id: str
    input: str
    submitted_seq: int
    started: bool = False
    turn: int = 0
    """Model turns taken (requests accepted for this task)."""
    attempt: int = 0
    """The attempt of the current turn (1 + retries after a timeout)."""
    turn_state: str = ""
    """``""`` before the first turn | ``open`` | ``done`` | ``timed_out``."""
    tools: tuple[TaskTool, ...] = ()
    """The tool calls of the last reply, in order."""
    output: str | None = None
    """The final answer, once a reply asked for no tool: the task is ready to finish."""
    tokens: int = 0
    """Tokens the server reported for this task's model calls."""
    model_calls: int = 0
    tool_calls: int = 0
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return (
            f'{{"attempt":{self.attempt},"input":{jstr(self.input)},"model_calls":{self.model_calls},'
            f'"output":{jopt_str(self.output)},"started":{"true" if self.started else "false"},'
            f'"submitted_seq":{self.submitted_seq},"task_id":{jstr(self.task_id)},"tokens":{self.tokens},'
            f'"tool_calls":{self.tool_calls},"tools":{jlist([t.to_json() for t in self.tools])},'
            f'"turn":{self.turn},"turn_state":{jstr(self.turn_state)}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Tasks(_Cached):
    """The task queue (submission order; the head runs) and how recent tasks ended."""

    queue: tuple[Task, ...] = ()
    ended: tuple[tuple[str, str], ...] = ()
    """(task id, ``succeeded`` | ``failed`` | ``cancelled``), the newest last, capped."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def running(self) -> Task | None:
        q = self.queue
        return q[0] if q and q[0].started else None

    def find(self, task_id: str) -> Task | None:
        for t in self.queue:
            if t.task_id == task_id:
                return t
        return None

    def ended_as(self, task_id: str) -> str | None:
        for t, how in self.ended:
            if t == task_id:
                return how
        return None

    def _encode(self) -> str:
        return (
            f'{{"ended":{jlist([f"[{jstr(t)},{jstr(h)}]" for t, h in self.ended])},'
            f'"queue":{jlist([t.json_bytes().decode() for t in self.queue])}}}'
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Quota(_Cached):
    """Use in the current fixed window of broker time (fold version 4 on)."""

    window: int = -1
    """The window's index (broker ms // window length); -1: none yet."""
    tokens: int = 0
    calls: int = 0
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _encode(self) -> str:
        return f'{{"calls":{self.calls},"tokens":{self.tokens},"window":{self.window}}}'


@dataclass(frozen=True, kw_only=True, slots=True)
class Dedupe(_Cached):
    """Dedupe memory (inside the hash: it decides future verdicts).

    ``event_ids``: the last K client event ids, oldest first (canonical UUID text).
    ``delivery_hwm`` / ``bounce_hwm``: per source partition, the highest source offset of
    a ``MessageDelivered`` / ``MessageBounced`` already judged, as sorted pairs.
    """

    event_ids: tuple[str, ...] = ()
    delivery_hwm: tuple[tuple[int, int], ...] = ()
    bounce_hwm: tuple[tuple[int, int], ...] = ()
    ids_json: str | None = field(default=None, repr=False, compare=False)
    """The JSON array of ``event_ids`` (kept incrementally by ``with_event_id``)."""
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def seen(self, event_id: str) -> bool:
        """``event_id in self.event_ids``, for a canonical UUID ``event_id``.

        Asked for every client record, and the answer is nearly always no: one C search
        of the JSON array for ``"<id>"`` says so, instead of up to K string compares. It
        cannot miss (every remembered id appears quoted in ``ids_json``, which is exactly
        ``_ids_json(event_ids)``, as the state's canonical bytes already rely on); a hit
        is confirmed on the tuple."""
        ids_json = self.ids_json
        if ids_json is not None and f'"{event_id}"' not in ids_json:
            return False
        return event_id in self.event_ids

    def with_event_id(self, event_id: str, keep: int) -> Dedupe:
        """Remember ``event_id`` (a canonical UUID: 36 ASCII chars, nothing to escape),
        forgetting the oldest beyond ``keep``. The JSON array is updated by slicing, not
        re-joined (each element is exactly 38 characters plus a comma)."""
        ids = self.event_ids
        if not ids:
            return self._with_ids((event_id,), f'["{event_id}"]')
        old = self.ids_json if self.ids_json is not None else _ids_json(ids)
        if len(ids) >= keep:
            drop = len(ids) - keep + 1
            ids = ids[drop:]
            old = "[" + old[1 + 39 * drop :] if ids else "[]"
        new = (*ids, event_id)
        tail = f'"{event_id}"]' if not ids else f',"{event_id}"]'
        return self._with_ids(new, old[:-1] + tail)

    def _with_ids(self, event_ids: tuple[str, ...], ids_json: str) -> Dedupe:
        # The constructor, not dataclasses.replace: this runs for every client record.
        return Dedupe(event_ids=event_ids, delivery_hwm=self.delivery_hwm, bounce_hwm=self.bounce_hwm,
                      ids_json=ids_json)

    def _encode(self) -> str:
        ids = self.ids_json if self.ids_json is not None else _ids_json(self.event_ids)
        return (
            f'{{"bounce_hwm":{_pairs(self.bounce_hwm)},'
            f'"delivery_hwm":{_pairs(self.delivery_hwm)},"event_ids":{ids}}}'
        )


def _ids_json(ids: tuple[str, ...]) -> str:
    return '["' + '","'.join(ids) + '"]' if ids else "[]"


def _pairs(pairs: tuple[tuple[int, int], ...]) -> str:
    if not pairs:
        return "[]"
    return "[" + ",".join([f"[{p},{o}]" for p, o in pairs]) + "]"


# --- the state --------------------------------------------------------------------------

_EMPTY_CAPS: Final = Capabilities()
_EMPTY_USAGE: Final = Usage()
_EMPTY_COUNTERS: Final = Counters()
_EMPTY_LIFE: Final = Life()
_EMPTY_WINDOW: Final = Window()
_EMPTY_INBOX: Final = Inbox()
_EMPTY_CALLS: Final = Calls()
_EMPTY_DEDUPE: Final = Dedupe()
EMPTY_TASKS: Final = Tasks()
EMPTY_QUOTA: Final = Quota()


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentState:
    """Everything the fold knows about one agent key (all of it inside the hash).

    A key never spawned has a placeholder state (``status == "NONE"``, no identity) that
    still counts ``seq`` and remembers event ids: every record of a key, accepted or
    not, takes the next ``seq`` of that key's audit chain.

    ``to_bytes()`` is ``encode_state``; bytes decode back with
    ``aosk.kernel.statecodec.decode_state`` (the codec imports this module, not the reverse).
    """

    agent_id: str
    """The key (``~p<partition>`` for records without a key)."""
    fold_version: int
    seq: int = 0
    """Number of records folded for this key (the last one's ``seq``)."""
    status: str = Status.NONE
    identity: Identity | None = None
    budgets: Budgets | None = None
    """Absolute limits; None until spawned."""
    usage: Usage = _EMPTY_USAGE
    capabilities: Capabilities = _EMPTY_CAPS
    counters: Counters = _EMPTY_COUNTERS
    life: Life = _EMPTY_LIFE
    window: Window = _EMPTY_WINDOW
    inbox: Inbox = _EMPTY_INBOX
    calls: Calls = _EMPTY_CALLS
    dedupe: Dedupe = _EMPTY_DEDUPE
    tasks: Tasks = EMPTY_TASKS
    """Queued and running tasks (fold version 4 on). In the canonical bytes only when it
    holds something, so states of agents without tasks keep their bytes and hashes."""
    quota: Quota = EMPTY_QUOTA
    """Use in the current quota window (fold version 4 on); in the bytes once a window began."""
    partitions: int = 0
    """The journal's partition count as recorded by a fold-version-2 ``KernelUpgraded``
    marker; only ever set on a partition's pseudo-agent ``~p<n>`` (0: unknown, the key
    routing rule is off). In the canonical bytes only when set, so every state without
    it (all of version 1's) keeps its bytes and its hash."""
    _bytes: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tenant_id(self) -> str | None:
        return None if self.identity is None else self.identity.tenant_id

    @property
    def spawned(self) -> bool:
        return self.status != Status.NONE

    def remaining(self) -> dict[str, int]:
        """Remaining budgets (limit - used, floored at 0); zeros when not spawned."""
        b, u = self.budgets, self.usage
        if b is None:
            return {"tokens": 0, "tool_calls": 0, "steps": 0}
        return {
            "tokens": max(0, b.max_tokens - u.tokens),
            "tool_calls": max(0, b.max_tool_calls - u.tool_calls),
            "steps": max(0, b.max_steps - u.steps),
        }

    def exhausted(self) -> tuple[str, ...]:
        """Names of the budgets at 0, in a fixed order (those of ``remaining()``)."""
        b, u = self.budgets, self.usage
        if b is None:
            return _ALL_BUDGETS
        # remaining == max(0, limit - used) is 0 exactly when used >= limit. The fold asks
        # before every work event, and the answer is nearly always "none": no dict, no tuple.
        tokens, tool_calls, steps = u.tokens >= b.max_tokens, u.tool_calls >= b.max_tool_calls, u.steps >= b.max_steps
        if not (tokens or tool_calls or steps):
            return ()
        return tuple(name for name, out in zip(_ALL_BUDGETS, (tokens, tool_calls, steps), strict=True) if out)

    def to_bytes(self) -> bytes:
        return encode_state(self)


_ALL_BUDGETS: Final = ("tokens", "tool_calls", "steps")

_STATE_FIELDS: Final = tuple(
    f for f in AgentState.__dataclass_fields__ if not f.startswith("_")
)


def _slot_writer(name: str) -> Callable[[AgentState, Any], None]:
    """Writes slot ``name`` of an ``AgentState`` through its member descriptor: no frozen
    ``__setattr__`` and no attribute lookup per write."""
    write: Callable[[AgentState, Any], None] = getattr(AgentState, name).__set__
    return write


_read_state: Final = attrgetter(*_STATE_FIELDS)
_WRITE_STATE: Final = tuple(_slot_writer(name) for name in _STATE_FIELDS)
_WRITE_STATE_FIELD: Final = dict(zip(_STATE_FIELDS, _WRITE_STATE, strict=True))
_write_bytes: Final = _slot_writer("_bytes")
_write_hash: Final = _slot_writer("_hash")


def evolve(state: AgentState, changes: Mapping[str, Any]) -> AgentState:
    """``dataclasses.replace(state, **changes)``, several times faster (the fold's hot path).

    Only for ``AgentState``, whose fields need no conversion; the caches start empty.
    Copies every field, then overwrites the changed ones (``KeyError`` for a name that
    is not a field)."""
    new = object.__new__(AgentState)
    # Every setter returns None, so any() runs them all; the loop stays in C (zip with
    # strict= would parse a keyword per call, ~8% of this function on 3.11).
    any(map(call, _WRITE_STATE, repeat(new), _read_state(state)))
    for name, value in changes.items():
        _WRITE_STATE_FIELD[name](new, value)
    _write_bytes(new, None)
    _write_hash(new, None)
    return new


def placeholder(agent_id: str, fold_version: int) -> AgentState:
    """The state of a key before any record: status ``NONE``, seq 0."""
    return AgentState(agent_id=agent_id, fold_version=fold_version)


def encode_state(state: AgentState) -> bytes:
    """The canonical bytes of a state (sorted compact JSON, UTF-8)."""
    b = state._bytes
    if b is None:
        ident = b"null" if state.identity is None else state.identity.json_bytes()
        b = b"".join(
            (
                b'{"agent_id":',
                jstr(state.agent_id).encode("utf-8"),
                b',"budgets":',
                budgets_json(state.budgets).encode("ascii"),
                b',"calls":',
                state.calls.json_bytes(),
                b',"capabilities":',
                state.capabilities.json_bytes(),
                b',"counters":',
                state.counters.json_bytes(),
                b',"dedupe":',
                state.dedupe.json_bytes(),
                b',"fold_version":%d,"identity":' % state.fold_version,
                ident,
                b',"inbox":',
                state.inbox.json_bytes(),
                b',"life":',
                state.life.json_bytes(),
                b',"partitions":%d' % state.partitions if state.partitions else b"",
                b"" if state.quota.window < 0 else b',"quota":' + state.quota.json_bytes(),
                b',"seq":%d,"status":"' % state.seq,
                state.status.encode("ascii"),
                b'"',
                b"" if not (state.tasks.queue or state.tasks.ended) else b',"tasks":' + state.tasks.json_bytes(),
                b',"usage":',
                state.usage.json_bytes(),
                b',"window":',
                state.window.json_bytes(),
                b"}",
            )
        )
        object.__setattr__(state, "_bytes", b)
    return b


def state_hash(state: AgentState) -> bytes:
    """``sha256(encode_state(state))``, 32 bytes, memoised on the (immutable) state."""
    h = state._hash
    if h is None:
        h = hashlib.sha256(encode_state(state)).digest()
        object.__setattr__(state, "_hash", h)
    return h
