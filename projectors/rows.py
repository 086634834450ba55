"""Rows of the projection tables, built from the fold's output (pure; no database).

Every value comes from the journal record or the fold: times are the record's
LogAppendTime, never a clock, so a rebuild produces the same rows byte for byte.

Column lists here and the tables in ``migrations/0001_projections.sql`` must agree;
``tests/unit/projectors`` checks the SQL types against the COPY types below.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring as _jstr
from typing import Any, Final

from aosk.kernel import AgentState, Verdict, canonical_verdict_bytes
from aosk.kernel.verdict import Kind

__all__ = [
    "EPOCH",
    "GENESIS",
    "ts",
    "ms_of",
    "link",
    "storage_key",
    "storable",
    "AUDIT_COLUMNS",
    "AUDIT_TYPES",
    "AUDIT_STATE_HASH",
    "AGENT_COLUMNS",
    "AGENT_TYPES",
    "CHECKPOINT_COLUMNS",
    "CHECKPOINT_TYPES",
    "MEMORY_COLUMNS",
    "memory_types",
    "memory_hash",
    "audit_row",
    "agent_row",
    "checkpoint_row",
    "subject_of",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
GENESIS: Final = bytes(32)
"""The ``prev_hash`` of every agent's first audit row."""
_MS: Final = timedelta(milliseconds=1)
_MAX_KEY_BYTES: Final = 512
"""Agent keys longer than this (UTF-8) are stored under ``storage_key``: a btree entry
must stay under ~2.7 kB, and Kafka keys have no such limit."""


def ts(ms: int) -> datetime:
    """A record's LogAppendTime (ms) as an exact ``timestamptz`` value."""
    # positional microseconds: the same exact integer arithmetic as milliseconds=ms,
    # a third cheaper (no keyword parsing); called for every row
    return EPOCH + timedelta(0, 0, ms * 1000)


def ms_of(t: datetime) -> int:
    """Inverse of ``ts``."""
    return (t - EPOCH) // _MS


def link(prev_hash: bytes, seq: int, value_hash: bytes, verdict_bytes: bytes) -> bytes:
    """One link of an agent's audit chain:
    ``sha256(prev_hash || seq as 8 bytes big-endian || sha256(raw value) || canonical verdict)``."""
    return hashlib.sha256(prev_hash + seq.to_bytes(8, "big") + value_hash + verdict_bytes).digest()


def storable(s: str | None, *, limit: int | None = None) -> str | None:
    """``s`` as PostgreSQL ``text`` accepts it: NUL becomes U+FFFD, lone surrogates
    too; cut to ``limit`` characters (with a marker) when given."""
    if s is None:
        return None
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        s = s.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(s) else s
    if limit is not None and len(s) > limit:
        s = s[:limit] + "\u2026"
    return s


def _unchanged(s: str, limit: int) -> bool:
    """Whether ``storable(s, limit=limit)`` is ``s`` itself (ASCII without NUL, short):
    nearly every value, checked without the call."""
    return len(s) <= limit and s.isascii() and "\x00" not in s


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def storage_key(key: str) -> str:
    """The ``agent_id`` a key is stored under. Nearly always the key itself; a key
    PostgreSQL could not store or index (NUL, lone surrogates, over 512 UTF-8 bytes) is
    stored as ``~h:<sha256 of its UTF-8>`` (``~`` is reserved: no real agent id starts
    with it). Audit rows stored that way keep the exact verdict in ``verdict_bytes``."""
    if len(key) <= 128 and key.isascii() and "\x00" not in key:
        return key
    raw = key.encode("utf-8", "surrogatepass")
    if "\x00" in key or len(raw) > _MAX_KEY_BYTES or _has_surrogates(key):
        return "~h:" + hashlib.sha256(raw).hexdigest()
    return key


# --- audit_log ---------------------------------------------------------------------------

AUDIT_COLUMNS: Final = (
    "journal_partition", "journal_offset", "agent_id", "seq", "recorded_at", "tenant_id", "event_id",
    "event_type", "subject", "kind", "reason", "status", "message", "fold_version",
    "checkpoint_due", "derived_ids", "paged_out_ids", "value_hash", "hash", "refused", "refusal",
    "verdict_bytes", "state_hash", "checkpoint", "memory_hashes",
)
AUDIT_TYPES: Final = (
    "int4", "int8", "text", "int8", "timestamptz", "text", "text",
    "text", "text", "text", "text", "text", "text", "int4",
    "bool", "text[]", "text[]", "bytea", "bytea", "bool", "text",
    "bytea", "bytea", "text", "bytea[]",
)
AUDIT_STATE_HASH: Final = AUDIT_COLUMNS.index("state_hash")
"""Where ``state_hash`` sits in an audit row (the writer sets it on an agent's last row of a batch)."""
_SUBJECT_FIELD: Final = {
    "ToolCallRequested": "tool",
    "ToolCallCompleted": "call_id",
    "LlmCallRequested": "model",
    "LlmCallCompleted": "call_id",
    "CallTimedOut": "call_id",
    "MemoryStored": "memory_id",
    "MemoryEmbedded": "memory_id",
    "MemoryForgotten": "memory_id",
    "ContextAppended": "entry_id",
    "MessageSent": "to_agent_id",
    "MessageDelivered": "from_agent_id",
    "MessageBounced": "message_id",
    "SpawnRequested": "child_id",
    "ForkRequested": "new_agent_id",
    "CapabilityGranted": "capability",
    "CapabilityRevoked": "capability",
    "AgentSuspended": "reason",
    "AgentWaiting": "on",
}
_SUBJECT_LIMIT: Final = 256
_MESSAGE_LIMIT: Final = 4096


def subject_of(event: Any) -> str | None:
    """What the record is about, for operators (the tool of a tool call, a memory id, a
    recipient...); None when the type has no such field."""
    if event is None:
        return None
    name = _SUBJECT_FIELD.get(type(event).__name__)
    if name is None:
        return None
    v = getattr(event, name, None)
    if not isinstance(v, str):
        return None
    return v if _unchanged(v, _SUBJECT_LIMIT) else storable(v, limit=_SUBJECT_LIMIT)


def audit_row(
    v: Verdict,
    *,
    value_hash: bytes,
    chain_hash: bytes,
    verdict_bytes: bytes,
    tenant_id: str | None,
    event: Any,
    refusal: str | None = None,
    recorded_at: datetime | None = None,
    state_hash: bytes | None = None,
    checkpoint: str | None = None,
    memory_hashes: list[bytes] | None = None,
) -> tuple[Any, ...]:
    """The ``audit_log`` row of one record. ``verdict_bytes`` (the canonical verdict the
    chain hashed) is stored only when the agent id or event id columns had to differ
    from it; ``refusal`` marks a record whose projection rows PostgreSQL refused.
    ``recorded_at``: ``ts(v.timestamp)`` if the caller has it already (the records of a
    broker batch share one LogAppendTime, so a fold reuses one datetime for many).
    ``state_hash`` / ``checkpoint``: the state's hash and the reason when the record
    made a checkpoint; ``memory_hashes``: ``memory_hash`` of each memory row it writes."""
    agent_id, event_id, tenant_col = v.agent_id, v.event_id, tenant_id
    agent_col = storage_key(agent_id)
    event_col = event_id
    if event_id is not None and not _unchanged(event_id, _SUBJECT_LIMIT):
        event_col = storable(event_id, limit=_SUBJECT_LIMIT)
    if tenant_id is not None and not (tenant_id.isascii() and "\x00" not in tenant_id):
        tenant_col = storable(tenant_id)
    exact = None if (agent_col == agent_id and event_col == event_id) else verdict_bytes
    message = v.message
    if refusal is not None or not message.isascii() or "\x00" in message or len(message) > _MESSAGE_LIMIT:
        message = storable(message, limit=_MESSAGE_LIMIT)  # type: ignore[assignment]
    derived, paged_out = v.derived, v.paged_out  # mostly empty: skip building from them
    return (
        v.partition, v.offset, agent_col, v.seq, ts(v.timestamp) if recorded_at is None else recorded_at,
        tenant_col, event_col,
        v.event_type, subject_of(event), v.kind, v.reason, v.status, message, v.fold_version,
        v.checkpoint_due,
        [e.event_id for e in derived] if derived else [],
        [storable(e.entry_id) for e in paged_out] if paged_out else [],
        value_hash, chain_hash, refusal is not None, refusal, exact, state_hash, checkpoint, memory_hashes,
    )


def refused_audit_row(row: tuple[Any, ...], refusal: str, verdict_bytes: bytes, *, hard: bool) -> tuple[Any, ...]:
    """``row`` flagged as refused. ``hard``: also reduce every free-text column to a
    form PostgreSQL always stores (the exact verdict is then kept in verdict_bytes)."""
    r = list(row)
    r[AUDIT_COLUMNS.index("refused")] = True
    r[AUDIT_COLUMNS.index("refusal")] = storable(refusal, limit=_MESSAGE_LIMIT)
    if hard:
        for name in ("tenant_id", "subject"):
            r[AUDIT_COLUMNS.index(name)] = None
        i = AUDIT_COLUMNS.index("message")
        r[i] = storable(r[i], limit=512)
        i = AUDIT_COLUMNS.index("paged_out_ids")
        r[i] = [storable(x, limit=_SUBJECT_LIMIT) for x in r[i]]
        r[AUDIT_COLUMNS.index("verdict_bytes")] = verdict_bytes
    return tuple(r)


# --- agent_state -------------------------------------------------------------------------

AGENT_COLUMNS: Final = (
    "agent_id", "journal_partition", "tenant_id", "parent_id", "name", "status", "priority", "fold_version",
    "seq", "last_offset", "state_hash", "audit_head", "tokens_used", "tool_calls_used", "steps_used",
    "max_tokens", "max_tool_calls", "max_steps", "context_window_tokens", "tokens_left", "tool_calls_left",
    "steps_left", "window_entries", "window_tokens", "inbox_messages", "open_calls", "capabilities",
    "memories_stored", "memories_forgotten", "messages_sent", "messages_received", "messages_bounced",
    "children_requested", "accepted", "rejected", "duplicates", "suspend_reason", "waiting_on", "exit_code",
    "exit_reason", "error", "spawned_at", "updated_at", "state",
)
AGENT_TYPES: Final = (
    "text", "int4", "text", "text", "text", "text", "int4", "int4",
    "int8", "int8", "bytea", "bytea", "int8", "int8", "int8",
    "int8", "int8", "int8", "int8", "int8", "int8",
    "int8", "int4", "int8", "int4", "int4", "text[]",
    "int8", "int8", "int8", "int8", "int8",
    "int8", "int8", "int8", "int8", "text", "text", "int4",
    "text", "text", "timestamptz", "timestamptz", "bytea",
)


def agent_row(
    st: AgentState,
    *,
    partition: int,
    last_offset: int,
    state_bytes: bytes,
    state_hash: bytes,
    audit_head: bytes,
    counts: tuple[int, int, int],
    updated_ms: int,
) -> tuple[Any, ...]:
    """The ``agent_state`` row of a state (``counts``: accepted, rejected, duplicates)."""
    ident = st.identity
    b = st.budgets
    u = st.usage
    c = st.counters
    life = st.life
    left = st.remaining()
    return (
        storage_key(st.agent_id), partition,
        None if ident is None else ident.tenant_id,
        None if ident is None else ident.parent_id,
        None if ident is None else ident.name,
        st.status,
        None if ident is None else ident.priority,
        st.fold_version, st.seq, last_offset, state_hash, audit_head,
        u.tokens, u.tool_calls, u.steps,
        None if b is None else b.max_tokens,
        None if b is None else b.max_tool_calls,
        None if b is None else b.max_steps,
        None if b is None else b.context_window_tokens,
        left["tokens"], left["tool_calls"], left["steps"],
        len(st.window.entries), st.window.tokens, len(st.inbox.messages), len(st.calls.open),
        list(st.capabilities.names),
        c.memories_stored, c.memories_forgotten, c.messages_sent, c.messages_received, c.messages_bounced,
        c.children_requested,
        counts[0], counts[1], counts[2],
        life.suspend_reason, life.waiting_on, life.exit_code, life.exit_reason, life.error,
        None if ident is None else ts(ident.spawned_at_ms),
        ts(updated_ms),
        state_bytes,
    )


def count_verdict(counts: tuple[int, int, int], kind: str) -> tuple[int, int, int]:
    a, r, d = counts
    if kind == Kind.ACCEPTED:
        return a + 1, r, d
    if kind == Kind.REJECTED:
        return a, r + 1, d
    return a, r, d + 1


# --- checkpoints -------------------------------------------------------------------------

CHECKPOINT_COLUMNS: Final = (
    "agent_id", "seq", "journal_partition", "journal_offset", "taken_at", "reason", "fold_version",
    "state_hash", "state",
)
CHECKPOINT_TYPES: Final = ("text", "int8", "int4", "int8", "timestamptz", "text", "int4", "bytea", "bytea")


def checkpoint_row(v: Verdict, reason: str, state_bytes: bytes, state_hash: bytes) -> tuple[Any, ...]:
    return (
        storage_key(v.agent_id), v.seq, v.partition, v.offset, ts(v.timestamp), reason, v.fold_version,
        state_hash, state_bytes,
    )


# --- memories ----------------------------------------------------------------------------

MEMORY_COLUMNS: Final = (
    "agent_id", "memory_id", "tenant_id", "source", "role", "text", "metadata", "importance", "embedding",
    "journal_partition", "journal_offset", "seq", "stored_at", "embedded_at", "embedded_offset", "forgotten",
    "forgotten_at", "forgotten_offset", "content_hash",
)


def memory_types(vector_oid: int) -> tuple[Any, ...]:
    return (
        "text", "text", "text", "text", "text", "text", "jsonb", "float8", vector_oid,
        "int4", "int8", "int8", "timestamptz", "timestamptz", "int8", "bool",
        "timestamptz", "int8", "bytea",
    )


_MEMORY_HASHED: Final = (
    "agent_id", "memory_id", "tenant_id", "source", "role", "text", "metadata", "importance",
    "journal_partition", "journal_offset", "seq",
)
_TOMBSTONE_HASHED: Final = ("agent_id", "memory_id", "tenant_id", "journal_partition", "forgotten_offset")


def memory_hash(row: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The content hash of a ``memories`` row (a mapping by column, or a row in
    ``MEMORY_COLUMNS`` order): sha256 of sorted compact JSON of who it belongs to, where
    it came from and what it says -- agent, memory id, tenant, source, role, text,
    metadata, importance, journal position and seq -- or, once forgotten, of its
    tombstone (agent, memory id, tenant, partition, the forgetting offset). Not the
    embedding, which a later ``MemoryEmbedded`` may set. The projector stores it with the
    row and in the audit row of the record that wrote it; ``aosk audit verify``
    recomputes it from the row."""
    get = row.__getitem__ if isinstance(row, Mapping) else (lambda c: row[_MEMORY_I[c]])
    if get("forgotten"):
        doc: list[Any] = ["forgotten", *(get(c) for c in _TOMBSTONE_HASHED)]
    else:
        doc = ["memory", *(get(c) for c in _MEMORY_HASHED)]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


_MEMORY_I: Final = {name: i for i, name in enumerate(MEMORY_COLUMNS)}


# --- the canonical verdict, fast ----------------------------------------------------------


def _fast_verdict_bytes(v: Verdict) -> bytes:
    """``canonical_verdict_bytes(v)`` built by hand (about 5x faster than json.dumps
    with sort_keys); used only if it agrees with the kernel's on the samples below.
    One f-string (not ``+`` chains: no intermediate strings); ``int.__repr__`` so that
    a non-int fails loudly instead of being formatted differently from json."""
    r = int.__repr__
    derived, paged_out, event_id, event_type = v.derived, v.paged_out, v.event_id, v.event_type
    return (
        f'{{"agent_id":{_jstr(v.agent_id)},"checkpoint_due":{"true" if v.checkpoint_due else "false"},'
        f'"derived":[{",".join([_jstr(e.event_id) for e in derived]) if derived else ""}],'
        f'"event_id":{"null" if event_id is None else _jstr(event_id)},'
        f'"event_type":{"null" if event_type is None else _jstr(event_type)},'
        f'"fold_version":{r(v.fold_version)},"kind":{_jstr(v.kind)},"offset":{r(v.offset)},'
        f'"paged_out":[{",".join([_jstr(e.entry_id) for e in paged_out]) if paged_out else ""}],'
        f'"partition":{r(v.partition)},"reason":{_jstr(v.reason)},"seq":{r(v.seq)},'
        f'"status":{_jstr(v.status)},"timestamp":{r(v.timestamp)}}}'
    ).encode()


def _samples() -> list[Verdict]:
    from aosk.events import ContextAppended
    from aosk.kernel import ContextEntry

    ev = ContextAppended(event_id="e\u00e9\"\\\n1", agent_id="a", tenant_id="t", occurred_at=0, origin="client",
                         entry_id="x", role="r", content="c", tokens=1, importance=0.5)
    base = dict(kind="accepted", reason="ok", message="m", agent_id="ag\u00fc\u2028\"\t", partition=3,
                offset=12345678901, timestamp=1_700_000_000_123, status="RUNNING", seq=7, state_hash=b"\1" * 32,
                fold_version=1)
    entry = ContextEntry(entry_id="p\u00ff\x01", role="user", content="c", tokens=1, importance=0.5, seq=1)
    return [
        Verdict(**base, event_id=None, event_type=None),  # type: ignore[arg-type]
        Verdict(**base, event_id="id-\ud7ff", event_type="ContextAppended", derived=(ev, ev),  # type: ignore[arg-type]
                paged_out=(entry, entry), checkpoint_due=True),
    ]


def _pick_verdict_encoder() -> Callable[[Verdict], bytes]:
    try:
        if all(_fast_verdict_bytes(v) == canonical_verdict_bytes(v) for v in _samples()):
            return _fast_verdict_bytes
    except Exception:  # noqa: BLE001 - the kernel's verdict changed shape: use its encoder
        pass
    return canonical_verdict_bytes


verdict_bytes: Final = _pick_verdict_encoder()
"""The canonical verdict of the audit chain (exactly ``canonical_verdict_bytes``)."""
