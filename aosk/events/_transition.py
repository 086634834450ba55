"""A one-pass writer for ``Transition`` records: a worker encodes one per journal record,
and fastavro's generic writer (record dict, schema walk) cost ~15 us of the ~100 us a
record takes end to end.

It writes exactly the bytes of the generic path (a differential test pins it) for the
one schema it was written for, and only then: ``transition_writer`` returns None when
the current ``Transition`` schema has another canonical form (a schema change falls back
to the generic writer until this one is updated). A value that does not fit (an int
beyond its range, an unknown verdict kind, a string that does not encode) makes it
return None too, so the generic writer raises its precise ``EventRejected``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Final

from aosk.events._schemas import SchemaSet

__all__ = ["transition_writer"]

_CANONICAL: Final = (
    '{"name":"aosk.events.Transition","type":"record","fields":[{"name":"journal_partition","type":"int"},'
    '{"name":"journal_offset","type":"long"},{"name":"agent_id","type":"string"},'
    '{"name":"event_id","type":["null","string"]},{"name":"event_type","type":["null","string"]},'
    '{"name":"verdict","type":{"name":"aosk.events.VerdictKind","type":"enum",'
    '"symbols":["accepted","rejected","duplicate"]}},{"name":"reason","type":"string"},'
    '{"name":"message","type":"string"},{"name":"status","type":"string"},{"name":"seq","type":"long"},'
    '{"name":"state_hash","type":"bytes"},{"name":"fold_version","type":"int"},'
    '{"name":"timestamp","type":"long"}]}'
)
"""The parsing canonical form this writer implements (``Transition`` v1)."""

_KINDS: Final = {"accepted": b"\x00", "rejected": b"\x02", "duplicate": b"\x04"}
_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
_SMALL: Final = tuple(
    bytes((((n << 1) ^ (n >> 63)),)) if -64 <= n < 64 else b"" for n in range(-64, 64)
)


@lru_cache(maxsize=8192)
def _big(n: int) -> bytes:
    """The varint of a long past one byte; cached: broker timestamps repeat from record
    to record, and small counts (lengths, seqs) recur."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _long(n: int) -> bytes:
    """Avro's zig-zag varint of a long in range (checked by the caller)."""
    if -64 <= n < 64:
        return _SMALL[n + 64]
    return _big(n)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return _long(len(b)) + b


def transition_writer(schemas: SchemaSet) -> Callable[..., bytes | None] | None:
    """The writer for the current ``Transition`` schema of ``schemas`` (None if it is not
    the schema this module implements). It takes ``Transition``'s fields positionally, in
    schema order, so a worker need not build a ``Transition`` per verdict."""
    current = schemas.current("Transition")
    if current.canonical != _CANONICAL:
        return None
    header = b"\xc3\x01" + current.fingerprint

    def write(p: int, off: int, agent_id: str, eid: str | None, etype: str | None, verdict: str, reason: str,
              message: str, status: str, seq: int, state_hash: bytes, fv: int, ts: int) -> bytes | None:
        kind = _KINDS.get(verdict)
        if (kind is None or type(p) is not int or type(fv) is not int or type(off) is not int
                or type(seq) is not int or type(ts) is not int or not _INT_MIN <= p <= _INT_MAX
                or not _INT_MIN <= fv <= _INT_MAX or not _LONG_MIN <= off <= _LONG_MAX
                or not _LONG_MIN <= seq <= _LONG_MAX or not _LONG_MIN <= ts <= _LONG_MAX
                or type(state_hash) is not bytes):
            return None
        try:
            return b"".join((
                header, _long(p), _long(off), _str(agent_id),
                b"\x00" if eid is None else b"\x02" + _str(eid),
                b"\x00" if etype is None else b"\x02" + _str(etype),
                kind, _str(reason), _str(message), _str(status), _long(seq),
                _long(len(state_hash)), state_hash, _long(fv), _long(ts),
            ))
        except (AttributeError, TypeError, UnicodeEncodeError):
            return None

    return write
