"""What a folding process keeps per agent key: the state, and beside it (outside the hash)
the last applied offset and the recent verdicts.

``AgentSlot`` is what a worker snapshots (``encode_slot`` / ``decode_slot``)
and what ``apply`` takes and returns. A record at an offset <= ``last_offset`` was
applied before (a redelivery after a crash): ``apply`` returns the slot unchanged and
the original verdict from ``recent`` so the worker can send it again, with its derived
events re-derived from the redelivered record (``derive.derived_for``: byte-identical).
``recent`` keeps verdicts without derived events and without ``paged_out`` entries
(projectors, the only users of those, never see redeliveries: they store offsets
transactionally), so a slot stays small: the state plus ~400 bytes per kept verdict. How
many are kept is the caller's setting (``apply(..., keep_verdicts=n)``), not a fold
parameter: it changes no verdict and no hash.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from aosk.kernel.state import AgentState, encode_state
from aosk.kernel.statecodec import StateDecodeError, decode_state
from aosk.kernel.verdict import Verdict

__all__ = ["AgentSlot", "encode_slot", "decode_slot"]

_MAGIC: Final = b"AKS1"
_HEAD: Final = struct.Struct(">4sIq")


@dataclass(frozen=True, slots=True)
class AgentSlot:
    """One key's fold state plus the bookkeeping kept beside it (outside the hash)."""

    state: AgentState
    last_offset: int = -1
    """Offset of the last record applied to this key (-1: none)."""
    recent: tuple[Verdict, ...] = ()
    """The last ``keep_verdicts`` verdicts (``apply``), oldest first, without ``derived`` / ``paged_out``."""

    def verdict_at(self, offset: int) -> Verdict | None:
        for v in reversed(self.recent):
            if v.offset == offset:
                return v
        return None


def _verdict_to_plain(v: Verdict) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "reason": v.reason,
        "message": v.message,
        "agent_id": v.agent_id,
        "partition": v.partition,
        "offset": v.offset,
        "timestamp": v.timestamp,
        "event_id": v.event_id,
        "event_type": v.event_type,
        "status": v.status,
        "seq": v.seq,
        "state_hash": v.state_hash.hex(),
        "fold_version": v.fold_version,
        "checkpoint_due": v.checkpoint_due,
    }


def _verdict_from_plain(d: dict[str, Any]) -> Verdict:
    d = dict(d)
    d["state_hash"] = bytes.fromhex(d["state_hash"])
    return Verdict(**d)


def encode_slot(slot: AgentSlot) -> bytes:
    """``b"AKS1" | u32 state length | i64 last offset | canonical state | recent (JSON)``."""
    state = encode_state(slot.state)
    recent = json.dumps(
        [_verdict_to_plain(v) for v in slot.recent], separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    return _HEAD.pack(_MAGIC, len(state), slot.last_offset) + state + recent


def decode_slot(data: bytes) -> AgentSlot:
    """Inverse of ``encode_slot``; ``StateDecodeError`` if the bytes are not a slot."""
    if len(data) < _HEAD.size:
        raise StateDecodeError("not an agent slot: too short")
    magic, n, last_offset = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise StateDecodeError(f"not an agent slot: magic {magic!r}")
    start = _HEAD.size
    state = decode_state(data[start : start + n])
    try:
        recent = tuple(_verdict_from_plain(v) for v in json.loads(data[start + n :]))
    except (ValueError, KeyError, TypeError) as e:
        raise StateDecodeError(f"not an agent slot: recent verdicts ({e})") from e
    return AgentSlot(state, last_offset, recent)
