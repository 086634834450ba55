"""The ``memories`` projection: what each record changes, and recall.

Changes (all from accepted records, last write wins, the same whatever the batching):

* ``MemoryStored``: the memory row (text, metadata, importance, embedding if given);
  storing an id again replaces the row;
* a paged-out context entry (listed in a verdict): the memory with the entry's id, its
  content as text, embedding NULL;
* ``MemoryEmbedded``: sets the embedding of an existing, not forgotten memory;
* ``MemoryForgotten``: removes text, metadata and embedding (and when it was embedded)
  and keeps a tombstone.

Every full row carries ``content_hash`` (``rows.memory_hash``: its content, or once
forgotten its tombstone); each op carries the hash it leaves, so the record's audit row
can list them (``memory_hashes``) for ``aosk audit verify``.

Recall (the read side) is ``aosk.reads.memory``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from psycopg import sql

from aosk.errors import RecallError  # its old import path (tests/unit/test_errors.py)
from aosk.kernel import Verdict
from aosk.projectors.db import pack_vector, qualified
from aosk.projectors.rows import MEMORY_COLUMNS, memory_hash, storage_key, ts

__all__ = [
    "MemoryOp",
    "memory_ops",
    "op_hashes",
    "MemoryChanges",
    "RecallError",
]

# An op: ("full", key, row list) | ("embed", key, vector, at, offset)
#       | ("forget", key, at, offset, tombstone hash)
MemoryOp = tuple[Any, ...]

_I: Final = {name: i for i, name in enumerate(MEMORY_COLUMNS)}
_HASH: Final = _I["content_hash"]


def memory_ops(v: Verdict, event: Any, tenant_id: str | None, *, at: datetime | None = None) -> tuple[MemoryOp, ...]:
    """The memory changes of one accepted record (``v`` its verdict). ``at``:
    ``ts(v.timestamp)`` if the caller has it already."""
    if tenant_id is None:  # only spawned agents accept memory events or page out
        return ()
    agent = storage_key(v.agent_id)
    if at is None:
        at = ts(v.timestamp)
    ops: list[MemoryOp] = []
    name = v.event_type
    if name == "MemoryStored":
        emb = None if event.embedding is None else pack_vector(event.embedding)
        row = [
            agent, event.memory_id, tenant_id, "stored", None, event.text, dict(event.metadata), event.importance,
            emb, v.partition, v.offset, v.seq, at, at if emb is not None else None,
            v.offset if emb is not None else None, False, None, None, None,
        ]
        row[_HASH] = memory_hash(row)
        ops.append(("full", (agent, event.memory_id), row))
    elif name == "MemoryEmbedded":
        ops.append(("embed", (agent, event.memory_id), pack_vector(event.embedding), at, v.offset))
    elif name == "MemoryForgotten":
        tomb = memory_hash({"forgotten": True, "agent_id": agent, "memory_id": event.memory_id, "tenant_id": tenant_id,
                            "journal_partition": v.partition, "forgotten_offset": v.offset})
        ops.append(("forget", (agent, event.memory_id), at, v.offset, tomb))
    for e in v.paged_out:
        row = [
            agent, e.entry_id, tenant_id, "paged_out", e.role, e.content, {"tokens": e.tokens}, e.importance,
            None, v.partition, v.offset, v.seq, at, None, None, False, None, None, None,
        ]
        row[_HASH] = memory_hash(row)
        ops.append(("full", (agent, e.entry_id), row))
    return tuple(ops)


def op_hashes(ops: tuple[MemoryOp, ...]) -> list[bytes] | None:
    """The content hashes the ops leave on their rows (the audit row's ``memory_hashes``)."""
    out = [op[2][_HASH] if op[0] == "full" else op[4] for op in ops if op[0] != "embed"]
    return out or None


class MemoryChanges:
    """The ops of a run of records merged into full rows (inserted or replacing) and
    patches of rows written by earlier batches, in journal order semantics."""

    __slots__ = ("full", "patches")

    def __init__(self) -> None:
        self.full: dict[tuple[str, str], list[Any]] = {}
        self.patches: dict[tuple[str, str], list[Any]] = {}
        """key -> [embedding or None, embedded_at, embedded_offset, forgotten_at, forgotten_offset,
        tombstone hash]"""

    def add(self, ops: Iterable[MemoryOp]) -> None:
        for op in ops:
            kind, key = op[0], op[1]
            if kind == "full":
                self.full[key] = list(op[2])
                self.patches.pop(key, None)
                continue
            row = self.full.get(key)
            if row is not None:
                if kind == "embed":
                    if not row[_I["forgotten"]]:
                        row[_I["embedding"]] = op[2]
                        row[_I["embedded_at"]] = op[3]
                        row[_I["embedded_offset"]] = op[4]
                else:
                    _forget_row(row, op[2], op[3], op[4])
                continue
            patch = self.patches.setdefault(key, [None, None, None, None, None, None])
            if kind == "embed":
                if patch[3] is None:  # an embedding after forgetting does nothing
                    patch[0], patch[1], patch[2] = op[2], op[3], op[4]
            else:
                patch[0] = patch[1] = patch[2] = None
                patch[3], patch[4], patch[5] = op[2], op[3], op[4]

    def __bool__(self) -> bool:
        return bool(self.full or self.patches)


def _forget_row(row: list[Any], at: Any, offset: int, tombstone: bytes) -> None:
    row[_I["text"]] = None
    row[_I["metadata"]] = {}
    row[_I["embedding"]] = None
    row[_I["embedded_at"]] = None
    row[_I["embedded_offset"]] = None
    row[_I["forgotten"]] = True
    row[_I["forgotten_at"]] = at
    row[_I["forgotten_offset"]] = offset
    row[_HASH] = tombstone


def patch_statements(schema: str) -> tuple[sql.Composed, sql.Composed]:
    """(embed, forget) UPDATE statements for rows written by earlier batches."""
    t = qualified(schema, "memories")
    embed = sql.SQL(
        "update {} set embedding = %b, embedded_at = %s, embedded_offset = %s "
        "where agent_id = %s and memory_id = %s and not forgotten"
    ).format(t)
    forget = sql.SQL(
        "update {} set text = null, metadata = '{{}}', embedding = null, embedded_at = null, embedded_offset = null, "
        "forgotten = true, forgotten_at = %s, "
        "forgotten_offset = %s, content_hash = %s where agent_id = %s and memory_id = %s"
    ).format(t)
    return embed, forget
