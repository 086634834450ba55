"""The kernel: one pure, deterministic fold ``apply(slot, record) -> (slot, verdict)``.

Shared by the kernel workers, the projectors, point-in-time queries and the tests: the
same journal folds into the same states, byte for byte, on any machine and any
``PYTHONHASHSEED``. docs/kernel.md has the rules, reason codes and policies.

What ``apply`` must never touch, and how that is enforced:

* no clock (``time``, ``datetime.now``): times come from the record (broker
  LogAppendTime, ms); derived events' ``occurred_at`` is that timestamp in us;
* no randomness (``random``, ``uuid.uuid4``, ``os.urandom``): derived ids are
  ``uuid5`` of the source event id, partition and offset;
* no I/O and no other key's or partition's data: a child's spawn, a fork's past state
  and a timeout are decided by a worker and written into the journal as kernel events,
  so a replay reads the decision instead of re-making it;
* no iteration order that depends on hashing (set / dict order of str keys changes with
  ``PYTHONHASHSEED``): everything that reaches bytes is sorted or kept in journal order;
* no float arithmetic beyond IEEE comparisons and one multiplication (importance bands),
  which are correctly rounded everywhere.

``tests/unit/kernel/test_kernel_determinism.py`` patches ``time.time``, ``uuid.uuid4`` and
``random`` to raise while folding, folds the golden journals in subprocesses with
different ``PYTHONHASHSEED`` values, and checks that importing this package loads none of
faust, psycopg, confluent_kafka or fastavro and reads no schema file.

Hash choice: ``state_hash(s)`` is exactly ``sha256(encode_state(s))`` for every record
(no hash chain standing in for it), so an ``AgentForked`` or a checkpoint can be checked
with a plain sha256. It stays cheap because each part of the state caches its canonical
bytes and the fold replaces only the parts an event changes: per record the cost is one
sha256 pass over the joined bytes (~0.5 us/KiB), not a re-encoding.

Layers: this package imports only the standard library, ``aosk.errors``,
``aosk.partitioning`` (pure murmur2) and the event classes of ``aosk.events`` (whose
codec loads on first use, never with the kernel).
"""

from __future__ import annotations

from aosk.kernel.derive import (
    AOSK_NAMESPACE,
    BOUNCE_REASONS,
    derived_event_id,
    derived_for,
    expired_calls,
    fork_event,
    timeout_events,
)
from aosk.kernel.fold import KERNEL_ONLY, apply
from aosk.kernel.folding import fold_journal, fold_with_verdicts, partition_state, partition_version
from aosk.kernel.lifecycle import COMPLETION_TYPES, LIFECYCLE, WORK_TYPES, fork_state
from aosk.kernel.paging import fit as page_window
from aosk.kernel.params import INITIAL_VERSION, LATEST_VERSION, VERSIONS, FoldParams, params_for
from aosk.kernel.plain import event_from_plain, event_to_plain
from aosk.kernel.routing import FoldArgs, Route, check_partition_count, fold_args, fold_key, home_partition, route
from aosk.kernel.slot import AgentSlot, decode_slot, encode_slot
from aosk.kernel.state import (
    FINAL_STATUSES,
    NON_FINAL_STATUSES,
    AgentState,
    ContextEntry,
    InboxMessage,
    OpenCall,
    Status,
    encode_state,
    placeholder,
    state_hash,
)
from aosk.kernel.statecodec import StateDecodeError, decode_state
from aosk.kernel.steps import Action, Finish, LlmStep, Start, ToolRun, next_action
from aosk.kernel.tasks import (
    QuotaRefusal,
    estimate_tokens,
    llm_call_id,
    quota_refusal,
    step_event_id,
    task_entry_ids,
    tool_call_id,
)
from aosk.kernel.verdict import REASONS, Kind, Reason, Record, Verdict, canonical_verdict_bytes, pseudo_key

__all__ = [
    # the fold
    "apply",
    "Record",
    "Verdict",
    "AgentSlot",
    "Kind",
    "Reason",
    "REASONS",
    "canonical_verdict_bytes",
    # state
    "AgentState",
    "ContextEntry",
    "InboxMessage",
    "OpenCall",
    "Status",
    "FINAL_STATUSES",
    "NON_FINAL_STATUSES",
    "placeholder",
    "encode_state",
    "decode_state",
    "state_hash",
    "StateDecodeError",
    "encode_slot",
    "decode_slot",
    # versions
    "FoldParams",
    "VERSIONS",
    "INITIAL_VERSION",
    "LATEST_VERSION",
    "params_for",
    # rules
    "LIFECYCLE",
    "WORK_TYPES",
    "COMPLETION_TYPES",
    "KERNEL_ONLY",
    "page_window",
    # for workers
    "expired_calls",
    "timeout_events",
    "fork_event",
    "fork_state",
    "derived_event_id",
    "derived_for",
    "BOUNCE_REASONS",
    "AOSK_NAMESPACE",
    "pseudo_key",
    # many records
    "fold_journal",
    "fold_with_verdicts",
    "partition_version",
    "partition_state",
    # routing: which key a record folds into (fold version 2 and later)
    "fold_key",
    "fold_args",
    "FoldArgs",
    "route",
    "Route",
    "home_partition",
    "check_partition_count",
    # tasks (fold version 4): the decision beside the fold, and the ids and checks it shares
    "next_action",
    "Action",
    "Start",
    "LlmStep",
    "ToolRun",
    "Finish",
    "llm_call_id",
    "tool_call_id",
    "step_event_id",
    "estimate_tokens",
    "task_entry_ids",
    "quota_refusal",
    "QuotaRefusal",
    # events as plain JSON
    "event_to_plain",
    "event_from_plain",
]
