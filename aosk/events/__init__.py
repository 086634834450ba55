"""Journal events: typed frozen classes and their Avro single-object codec.

The fold (``aosk.kernel``) imports its inputs from here. This package imports nothing
from Kafka, PostgreSQL or faust: it is the layer every other one builds on.

Importing the package loads only the event classes (``types``, standard library only).
The codec (fastavro, and every file under ``schemas/`` read, parsed and checked) loads
on first use of one of its names, e.g. ``from aosk.events import decode``. That keeps
``import aosk.kernel`` pure: the fold needs the classes, never the codec.
``tests/unit/kernel/test_kernel_determinism.py`` checks that importing the kernel
loads no fastavro and opens no schema file.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

from aosk.events.types import (
    EVENT_TYPES,
    KERNEL_ONLY_TYPES,
    ORIGINS,
    VERDICT_KINDS,
    AgentFailed,
    AgentForked,
    AgentKilled,
    AgentResumed,
    AgentSpawned,
    AgentStarted,
    AgentSuspended,
    AgentTerminated,
    AgentWaiting,
    Budgets,
    BudgetUpdated,
    CallTimedOut,
    CapabilityGranted,
    CapabilityRevoked,
    CheckpointRequested,
    ContextAppended,
    Event,
    ForkRequested,
    KernelUpgraded,
    LlmCallCompleted,
    LlmCallRequested,
    MemoryEmbedded,
    MemoryForgotten,
    MemoryRecalled,
    MemoryStored,
    MessageBounced,
    MessageDelivered,
    MessagesConsumed,
    MessageSent,
    RecordQuarantined,
    SpawnRequested,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallRequested,
    Transition,
)

if TYPE_CHECKING:
    from aosk.events._avro import Codec
    from aosk.events._schemas import InvalidSchemas, SchemaSet, SchemaVersion, load_schemas
    from aosk.events.codec import (
        SCHEMAS,
        decode,
        decode_transition,
        encode,
        encode_transition,
        encode_transition_fields,
    )

#: Codec names and the private module each comes from, imported on first access.
_CODEC_NAMES: Final = {
    "Codec": "aosk.events._avro",
    "InvalidSchemas": "aosk.events._schemas",
    "SchemaSet": "aosk.events._schemas",
    "SchemaVersion": "aosk.events._schemas",
    "load_schemas": "aosk.events._schemas",
    "SCHEMAS": "aosk.events.codec",
    "encode": "aosk.events.codec",
    "decode": "aosk.events.codec",
    "encode_transition": "aosk.events.codec",
    "encode_transition_fields": "aosk.events.codec",
    "decode_transition": "aosk.events.codec",
}


def __getattr__(name: str) -> Any:
    """Import a codec name on first access (PEP 562) and keep it as a module global."""
    module = _CODEC_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_CODEC_NAMES})


__all__ = [
    "encode",
    "decode",
    "encode_transition",
    "encode_transition_fields",
    "decode_transition",
    "Codec",
    "SCHEMAS",
    "SchemaSet",
    "SchemaVersion",
    "InvalidSchemas",
    "load_schemas",
    "EVENT_TYPES",
    "KERNEL_ONLY_TYPES",
    "ORIGINS",
    "VERDICT_KINDS",
    "AgentFailed",
    "AgentForked",
    "AgentKilled",
    "AgentResumed",
    "AgentSpawned",
    "AgentStarted",
    "AgentSuspended",
    "AgentTerminated",
    "AgentWaiting",
    "BudgetUpdated",
    "Budgets",
    "CallTimedOut",
    "CapabilityGranted",
    "CapabilityRevoked",
    "CheckpointRequested",
    "ContextAppended",
    "Event",
    "ForkRequested",
    "KernelUpgraded",
    "RecordQuarantined",
    "TaskCancelled",
    "TaskCompleted",
    "TaskFailed",
    "TaskSubmitted",
    "LlmCallCompleted",
    "LlmCallRequested",
    "MemoryEmbedded",
    "MemoryForgotten",
    "MemoryRecalled",
    "MemoryStored",
    "MessageBounced",
    "MessageDelivered",
    "MessageSent",
    "MessagesConsumed",
    "SpawnRequested",
    "ToolCallCompleted",
    "ToolCallRequested",
    "Transition",
]
