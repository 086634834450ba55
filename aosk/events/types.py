"""The journal's event classes: frozen, typed, one per Avro record in ``schemas/``.

Why plain frozen dataclasses: the fold (``aosk.kernel``) is a pure function over
immutable data, so events must be values (compared by content, never mutated).
Arrays are tuples for the same reason; ``metadata`` maps stay ``dict`` because the
contract says so (so events carrying a map are not hashable).

The class name is the Avro record name (namespace ``aosk.events``); the field names,
order, nullability and types mirror the current ``.avsc`` of each type, and
``tests/unit/test_schema_classes.py`` fails if they diverge. Nothing here imports the
codec, Kafka or PostgreSQL: this module is the bottom layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "ORIGINS",
    "VERDICT_KINDS",
    "Budgets",
    "Event",
    "Transition",
    "EVENT_TYPES",
    "KERNEL_ONLY_TYPES",
    # event types
    "AgentSpawned",
    "SpawnRequested",
    "AgentStarted",
    "AgentWaiting",
    "AgentSuspended",
    "AgentResumed",
    "AgentTerminated",
    "AgentKilled",
    "AgentFailed",
    "ForkRequested",
    "AgentForked",
    "ContextAppended",
    "MemoryStored",
    "MemoryEmbedded",
    "MemoryRecalled",
    "MemoryForgotten",
    "LlmCallRequested",
    "LlmCallCompleted",
    "ToolCallRequested",
    "ToolCallCompleted",
    "CallTimedOut",
    "MessageSent",
    "MessageDelivered",
    "MessageBounced",
    "MessagesConsumed",
    "CheckpointRequested",
    "CapabilityGranted",
    "CapabilityRevoked",
    "BudgetUpdated",
    "KernelUpgraded",
    "RecordQuarantined",
    "TaskSubmitted",
    "TaskCompleted",
    "TaskFailed",
    "TaskCancelled",
]

#: Symbols of the Avro enum ``Origin``, in schema order.
ORIGINS: Final = ("client", "kernel")
#: Symbols of the Avro enum ``VerdictKind``, in schema order.
VERDICT_KINDS: Final = ("accepted", "rejected", "duplicate")



@dataclass(frozen=True, kw_only=True, slots=True)
class Budgets:
    """Absolute limits of an agent (not an event; nested in spawns and BudgetUpdated)."""

    max_tokens: int
    max_tool_calls: int
    max_steps: int
    context_window_tokens: int
    tokens_per_hour: int = 0
    """Tokens (reported prompt + completion) per quota window; 0: no window limit."""
    calls_per_hour: int = 0
    """Model calls requested per quota window; 0: no window limit."""
    tokens_per_request: int = 0
    """Largest ``token_estimate`` of one ``LlmCallRequested``; 0: no limit."""
    quota_window_ms: int = 0
    """Length of a fixed window of broker time (aligned to the epoch); 0: one hour."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every journal event: the header every record carries.

    ``occurred_at`` is the producer's clock in microseconds since the epoch,
    informational only (times that matter come from the broker's LogAppendTime), so it
    stays a plain int. ``origin`` is ``"client"`` or ``"kernel"``. Only subclasses are
    encoded; ``Event`` itself has no schema. The Avro record name is ``type(e).__name__``.
    """

    event_id: str
    agent_id: str
    tenant_id: str
    occurred_at: int
    origin: str
    correlation_id: str | None = None
    causation_id: str | None = None


# --- lifecycle -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSpawned(Event):
    """An agent exists (READY). Kernel origin when it is a child (``parent_id`` set)."""

    parent_id: str | None = None
    name: str
    priority: int
    capabilities: tuple[str, ...]
    budgets: Budgets
    metadata: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class SpawnRequested(Event):
    """A parent asks for a child; the worker turns it into the child's AgentSpawned."""

    child_id: str
    name: str
    priority: int
    capabilities: tuple[str, ...]
    budgets: Budgets
    metadata: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentStarted(Event):
    """READY -> RUNNING."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentWaiting(Event):
    """RUNNING -> WAITING, on what (a call id, a message, ...)."""

    on: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSuspended(Event):
    """READY/RUNNING/WAITING -> SUSPENDED."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentResumed(Event):
    """WAITING -> RUNNING; SUSPENDED -> READY."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentTerminated(Event):
    """Any non-final -> TERMINATED."""

    exit_code: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentKilled(Event):
    """Any non-final -> TERMINATED (killed)."""

    signal: str
    by: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentFailed(Event):
    """Any non-final -> ERROR (final)."""

    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ForkRequested(Event):
    """Asks the kernel to fork this agent's state at ``at_seq`` into ``new_agent_id``."""

    new_agent_id: str
    at_seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentForked(Event):
    """Kernel-made: the new agent starts from ``state`` (a serialized fold state)."""

    source_agent_id: str
    source_seq: int
    source_state_hash: bytes
    state: bytes


# --- context and memory -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ContextAppended(Event):
    """An entry enters the context window; ``importance`` in [0, 1], >= 0.95 is pinned."""

    entry_id: str
    role: str
    content: str
    tokens: int
    importance: float


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryStored(Event):
    """A long-term memory; ``embedding`` may come later through MemoryEmbedded."""

    memory_id: str
    text: str
    embedding: tuple[float, ...] | None = None
    importance: float
    metadata: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryEmbedded(Event):
    """Supplies the embedding of a memory stored (or paged out) without one."""

    memory_id: str
    embedding: tuple[float, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryRecalled(Event):
    """Memories a query returned (the query itself is kept only as a hash)."""

    query_hash: str
    memory_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryForgotten(Event):
    """A memory is dropped."""

    memory_id: str


# --- calls ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class LlmCallRequested(Event):
    """An LLM call opens; its deadline is the record's LogAppendTime + ``timeout_ms``."""

    call_id: str
    model: str
    prompt_hash: str
    prompt_tokens: int
    timeout_ms: int
    task_id: str | None = None
    """The task whose turn this is (fold version 4 on); None: a call outside any task."""
    turn: int = 0
    attempt: int = 0
    token_estimate: int = 0
    context_entry_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class LlmCallCompleted(Event):
    """An LLM call closes (late when it follows CallTimedOut in the journal)."""

    call_id: str
    response: str
    completion_tokens: int
    latency_ms: int
    content: str = ""
    tool_names: tuple[str, ...] = ()
    """Tools the reply calls, in order (parallel to ``tool_arguments``)."""
    tool_arguments: tuple[str, ...] = ()
    """JSON object text of each call's arguments."""
    finish_reason: str = ""
    prompt_tokens: int = 0
    """Prompt tokens the server reported."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallRequested(Event):
    """A tool call opens; ``arguments`` is JSON text."""

    call_id: str
    tool: str
    arguments: str
    timeout_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallCompleted(Event):
    """A tool call closes, with its result or an error."""

    call_id: str
    result: str
    error: str | None = None
    duration_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CallTimedOut(Event):
    """Kernel-made: the call's deadline passed while it was open."""

    call_id: str


# --- tasks ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSubmitted(Event):
    """A task for the agent: queued, run in submission order, one at a time."""

    task_id: str
    input: str
    metadata: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskCompleted(Event):
    """Kernel-made (the runtime): the running task ends with its output."""

    task_id: str
    output: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskFailed(Event):
    """Kernel-made (the runtime): the task cannot finish; ``reason`` is a code."""

    task_id: str
    reason: str
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskCancelled(Event):
    """A client cancels a queued or running task; its open calls are abandoned."""

    task_id: str
    reason: str = ""


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageSent(Event):
    """A message leaves this agent (judged on the sender's side)."""

    message_id: str
    to_agent_id: str
    body: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageDelivered(Event):
    """Kernel-made, on the recipient's key; points at the MessageSent record."""

    message_id: str
    from_agent_id: str
    from_tenant_id: str
    body: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageBounced(Event):
    """Kernel-made, back on the sender's key; points at the MessageDelivered record."""

    message_id: str
    reason: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MessagesConsumed(Event):
    """The agent took these messages out of its inbox."""

    message_ids: tuple[str, ...]


# --- control ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointRequested(Event):
    """Asks for a checkpoint of the state at this record."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CapabilityGranted(Event):
    """Adds a tool to the agent's allowed set."""

    capability: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CapabilityRevoked(Event):
    """Removes a tool from the agent's allowed set."""

    capability: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetUpdated(Event):
    """New absolute limits; remaining = limit - used, floored at 0."""

    budgets: Budgets


@dataclass(frozen=True, kw_only=True, slots=True)
class KernelUpgraded(Event):
    """From this record on, the partition folds under ``fold_version``."""

    fold_version: int
    partitions: int = 0
    """The journal's partition count when the marker was written (schema v2); 0 means
    unknown, which is what every v1 record decodes to. Fold version 2 needs it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordQuarantined(Event):
    """The record at ``quarantined_offset`` of this partition stopped it (its schema
    fingerprint is unknown); from this marker on every reader folds that record as
    rejected ``quarantined`` (``aosk journal quarantine``). Produced without a key."""

    quarantined_offset: int
    fingerprint: str
    """Hex of the record's unknown fingerprint, as the operator saw it (informational)."""
    reason: str


# --- verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """The verdict on one journal record (topic aosk.agent-transitions); not an Event.

    ``verdict`` is ``"accepted"``, ``"rejected"`` or ``"duplicate"``; ``event_id`` and
    ``event_type`` are None for an undecodable record; ``timestamp`` is the journal
    record's LogAppendTime in milliseconds.
    """

    journal_partition: int
    journal_offset: int
    agent_id: str
    event_id: str | None = None
    event_type: str | None = None
    verdict: str
    reason: str
    message: str
    status: str
    seq: int
    state_hash: bytes
    fold_version: int
    timestamp: int


EVENT_TYPES: Final[Mapping[str, type[Event]]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            AgentSpawned,
            SpawnRequested,
            AgentStarted,
            AgentWaiting,
            AgentSuspended,
            AgentResumed,
            AgentTerminated,
            AgentKilled,
            AgentFailed,
            ForkRequested,
            AgentForked,
            ContextAppended,
            MemoryStored,
            MemoryEmbedded,
            MemoryRecalled,
            MemoryForgotten,
            LlmCallRequested,
            LlmCallCompleted,
            ToolCallRequested,
            ToolCallCompleted,
            CallTimedOut,
            MessageSent,
            MessageDelivered,
            MessageBounced,
            MessagesConsumed,
            CheckpointRequested,
            CapabilityGranted,
            CapabilityRevoked,
            BudgetUpdated,
            KernelUpgraded,
            RecordQuarantined,
            TaskSubmitted,
            TaskCompleted,
            TaskFailed,
            TaskCancelled,
        )
    }
)
"""Event type name (Avro record name) -> class."""

KERNEL_ONLY_TYPES: Final[frozenset[str]] = frozenset(
    {"AgentForked", "MessageDelivered", "MessageBounced", "CallTimedOut", "TaskCompleted", "TaskFailed"}
)
"""Types the fold accepts only with ``origin="kernel"``. AgentSpawned is kernel-only
when ``parent_id`` is set; the fold checks that case itself."""
