"""The fold's versioned parameters.

Every number that changes a verdict or a state hash is a constant of a fold version, not
a machine setting: two workers with different config files must still fold the same
journal into the same bytes. A new semantics ships as a new entry in ``VERSIONS`` and is
switched on by a ``KernelUpgraded`` marker written (without a key) to every partition;
history before the marker keeps folding under the version it was written with.

How many verdicts a folding process keeps beside a state (for redeliveries) is not a
fold parameter: it changes no verdict and no hash, so it is the caller's setting
(``apply(..., keep_verdicts=n)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from aosk.errors import UnknownFoldVersion

__all__ = ["FoldParams", "VERSIONS", "INITIAL_VERSION", "LATEST_VERSION", "params_for"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FoldParams:
    """The constants of one fold version."""

    version: int
    """The fold version these parameters belong to."""

    routes_by_partition: bool = False
    """Version 2 on: a keyed record that is not on its key's murmur2 partition (of the
    count the partition's ``KernelUpgraded`` marker recorded) belongs to the pseudo-agent
    ``~p<partition>`` and is rejected ``wrong_partition``; a marker switching to such a
    version must carry the partition count (``aosk.kernel.routing``)."""

    rejects_zero_embedding: bool = False
    """Version 3 on: an all-zero embedding (``MemoryStored``, ``MemoryEmbedded``) is
    rejected ``invalid_payload`` like a NaN one: its cosine distance to anything is
    undefined (pgvector returns NaN), so it could only poison memory search. Versions 1
    and 2 accept it (their history keeps its verdicts)."""

    runs_tasks: bool = False
    """Version 4 on: tasks (``TaskSubmitted`` ... ``TaskCancelled``), model calls that take
    a task's turn (``LlmCallRequested`` v2 with ``task_id``), replies and tool results
    kept as the task's context entries, and quotas per fixed window of broker time
    (``Budgets`` v2). Versions 1-3 reject the task events and task-bound calls
    ``needs_fold_version`` (and never judge window quotas)."""

    max_queued_tasks: int = 8
    """Tasks an agent holds at once (the running one included); more is ``task_queue_full``."""

    task_id_max_bytes: int = 128
    """Longest task id (its context entries' ids are made from it)."""

    max_tools_per_reply: int = 8
    """Tool calls one model reply may ask for."""

    tool_arguments_max_bytes: int = 8_192
    """Largest JSON arguments of one reply's tool calls together (UTF-8 bytes)."""

    task_queue_max_bytes: int = 131_072
    """Cap on the canonical size of the queued tasks (their inputs, mostly): with the
    others it keeps a state under ``state_max_bytes``."""

    prompt_ids_max_bytes: int = 32_768
    """Largest ``context_entry_ids`` of one model call (UTF-8 bytes of the ids together)."""

    ended_tasks_memory: int = 32
    """How many ended task ids (with how they ended) an agent remembers."""

    abandoned_calls_memory: int = 32
    """How many calls closed by their task's end are remembered, to name a late completion."""

    task_max_turns: int = 16
    """Model turns a task may take; ``next_action`` fails it (``max_turns``) after that."""

    turn_max_attempts: int = 3
    """Requests of one turn (the first and the retries after timeouts) before
    ``next_action`` fails the task (``model_timeout``)."""

    default_quota_window_ms: int = 3_600_000
    """The quota window when ``Budgets.quota_window_ms`` is 0: one hour."""

    dedupe_window: int = 128
    """K: how many recent client ``event_id`` values an agent remembers; a client event
    whose id is among them gets verdict ``duplicate``."""

    embedding_dim: int = 384
    """Length every embedding must have (``MemoryStored``, ``MemoryEmbedded``)."""

    checkpoint_interval: int = 100
    """A checkpoint is due whenever an agent's ``seq`` is a multiple of this."""

    window_max_entries: int = 256
    """Hard cap on context-window entries, whatever the agent's token budget."""

    window_max_bytes: int = 262_144
    """Hard cap on the canonical size of the context window (paging also triggers on it)."""

    entry_max_bytes: int = 16_384
    """Largest ``ContextAppended.content`` (UTF-8 bytes)."""

    pin_importance: float = 0.95
    """Entries with importance >= this are pinned: never paged out."""

    importance_bands: int = 10
    """Paging victims are taken from the lowest importance band first
    (band = floor(importance * bands)), least recently appended first within a band."""

    inbox_cap: int = 32
    """Messages an inbox holds; a delivery beyond it bounces with ``inbox_full``."""

    message_max_bytes: int = 4_096
    """Largest message body (UTF-8 bytes), checked on the sender's side (and again on
    delivery, where a bigger body is ``undeliverable``)."""

    inbox_max_bytes: int = 131_072
    """Cap on the canonical size of an inbox; a delivery beyond it is ``inbox_full``."""

    max_open_calls: int = 32
    """Open LLM + tool calls an agent may have at once."""

    timed_out_memory: int = 32
    """How many timed-out call ids are remembered to recognise a late completion."""

    max_timeout_ms: int = 7 * 24 * 3600 * 1000
    """Longest ``timeout_ms`` a call may ask for."""

    max_capabilities: int = 64
    """Size cap of an agent's capability set."""

    max_name_bytes: int = 256
    """Cap for ids, names, roles, tools, capabilities, models and metadata keys."""

    max_metadata_entries: int = 32
    """Entries in a metadata map."""

    max_metadata_value_bytes: int = 1_024
    """Largest metadata value (bytes of its JSON-escaped UTF-8 form)."""

    max_text_bytes: int = 65_536
    """Largest free text the fold does not keep (memory text, tool arguments)."""

    max_ids_per_event: int = 256
    """Ids in one ``MemoryRecalled`` / ``MessagesConsumed``."""

    note_max_chars: int = 1_024
    """Status notes kept in the state (suspend reason, exit reason, error, waiting-on)
    are cut to this many code points (never rejected: a failure report must land)."""

    state_max_bytes: int = 786_432
    """The bound the caps above keep the canonical state under (tested), so a state fits
    in an ``AgentForked`` record and a worker snapshot (the journal's 2 MiB record limit)."""


INITIAL_VERSION: Final = 1
"""The version every partition starts with (before any ``KernelUpgraded``)."""

VERSIONS: Final[Mapping[int, FoldParams]] = MappingProxyType({
    1: FoldParams(version=1),
    2: FoldParams(version=2, routes_by_partition=True),
    3: FoldParams(version=3, routes_by_partition=True, rejects_zero_embedding=True),
    4: FoldParams(version=4, routes_by_partition=True, rejects_zero_embedding=True, runs_tasks=True),
})
"""Every fold version this code can apply, by number. Version 2 = version 1 plus the
partition rule (``routes_by_partition``); version 3 = version 2 plus the all-zero
embedding rule (``rejects_zero_embedding``); version 4 = version 3 plus tasks, turns and
window quotas (``runs_tasks``); every other constant is the same."""

LATEST_VERSION: Final = max(VERSIONS)


def params_for(version: int) -> FoldParams:
    """The parameters of ``version``; raises ``UnknownFoldVersion`` if this code lacks it."""
    try:
        return VERSIONS[version]
    except KeyError:
        raise UnknownFoldVersion(version, known=tuple(VERSIONS)) from None
