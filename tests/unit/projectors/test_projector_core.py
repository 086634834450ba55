"""The parts ``aosk project`` and ``aosk replay`` share: which consumed records are folded
(``Intake``), the agent cache, fault injection, and closing resources without hiding the
error that ended a block. Consumers and messages are stand-ins (pure units); the real
broker runs them in tests/integration/test_projections.py and test_replay.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from confluent_kafka import KafkaException

from aosk._resources import ResourceHolder, Resources
from aosk.journal import record_from_message
from aosk.kernel import AgentSlot, Record, pseudo_key
from aosk.projectors.batch import AgentEntry, FoldedBatch, PartitionStop
from aosk.projectors.cache import AgentCache
from aosk.projectors.faults import Fault
from aosk.projectors.intake import PARTITION_EOF, Intake


class _Err:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return f"error {self._code}"


class _Msg:
    def __init__(self, partition: int, offset: int, *, key: bytes | None = b"a", error: int | None = None) -> None:
        self._p, self._o, self._k = partition, offset, key
        self._err = _Err(error) if error is not None else None

    def error(self) -> _Err | None:
        return self._err

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes:
        return b"v"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (2, 1_700_000_000_000 + self._o)


class _Consumer:
    """Records the calls a projector makes; ``seek`` fails ``fail_seeks`` times first."""

    def __init__(self, fail_seeks: int = 0) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.fail_seeks = fail_seeks

    def pause(self, tps: list[Any]) -> None:
        self.calls += [("pause", tp.partition, None) for tp in tps]

    def resume(self, tps: list[Any]) -> None:
        self.calls += [("resume", tp.partition, None) for tp in tps]

    def seek(self, tp: Any) -> None:
        if self.fail_seeks:
            self.fail_seeks -= 1
            raise KafkaException("fetcher not started")
        self.calls.append(("seek", tp.partition, tp.offset))


def _offsets(parts: dict[int, list[Record]]) -> dict[int, list[int]]:
    return {p: [r.offset for r in recs] for p, recs in parts.items()}


def test_take_folds_each_record_once_in_order_and_skips_what_is_not_to_fold() -> None:
    errors: list[int] = []
    intake = Intake("t", lambda m, err: errors.append(err.code()))
    for p, pos in {0: 5, 1: 0, 2: 0, 3: 0, 4: 0}.items():
        intake.assigned(p, pos)
    intake.stopped[2] = PartitionStop(2, 0, "stopped")
    intake.paused.add(3)
    intake.pending_seek.add(4)
    msgs = [_Msg(0, 4), _Msg(0, 5), _Msg(0, 6), _Msg(0, 6), _Msg(0, 5), _Msg(1, 0), _Msg(2, 0), _Msg(3, 0),
            _Msg(4, 0), _Msg(9, 0), _Msg(1, 1, error=7), _Msg(1, 0, error=PARTITION_EOF)]
    parts = intake.take(msgs)
    # behind pos, repeated and earlier-again records dropped; stopped, paused, seeking
    # and unowned partitions take nothing; errors go to on_error, end-of-partition marks eof
    assert _offsets(parts) == {0: [5, 6], 1: [0]}
    assert errors == [7]
    assert intake.eof == {1}
    assert _offsets(intake.take([_Msg(1, 1)])) == {1: [1]}
    assert intake.eof == set()


def test_take_stops_at_the_caps_and_says_which_partitions_went_over() -> None:
    intake = Intake("t", lambda m, err: None)
    intake.reset({0: 0, 1: 0})
    over: set[int] = set()
    parts = intake.take([_Msg(0, 0), _Msg(0, 1), _Msg(0, 2), _Msg(1, 0)], {0: 2, 1: 5}, over)
    assert _offsets(parts) == {0: [0, 1], 1: [0]}
    assert over == {0}


def test_a_partition_is_sought_back_to_its_position_once_resumed() -> None:
    intake = Intake("t", lambda m, err: None)
    intake.reset({0: 3, 1: 0})
    consumer = _Consumer()
    intake.park(consumer, {0: 3, 1: 10}, set())  # 0 is at its target
    assert consumer.calls == [("pause", 0, None)]
    assert intake.paused == {0} and intake.pending_seek == {0}
    assert intake.take([_Msg(0, 3)]) == {}
    consumer.calls.clear()
    intake.park(consumer, {0: 8, 1: 10}, set())  # its target moved on
    assert consumer.calls == [("resume", 0, None), ("seek", 0, 3)]
    assert intake.paused == set() and intake.pending_seek == set()
    consumer.calls.clear()
    intake.park(consumer, {0: 8, 1: 10}, {1})  # 1 was read beyond its target
    assert consumer.calls == [("pause", 1, None)]


def test_a_seek_the_consumer_cannot_do_yet_is_retried_and_nothing_is_taken_meanwhile() -> None:
    intake = Intake("t", lambda m, err: None)
    intake.assigned(0, 0)
    intake.assigned(1, 7)
    consumer = _Consumer(fail_seeks=1)
    intake.seek(consumer, [0, 1])
    assert intake.pending_seek == {0}  # 0's seek failed, 1's went through
    assert consumer.calls == [("seek", 1, 7)]
    assert _offsets(intake.take([_Msg(0, 0), _Msg(1, 7)])) == {1: [7]}
    intake.seek_pending(consumer)
    assert consumer.calls[-1] == ("seek", 0, -2)  # offset 0: the beginning
    assert intake.pending_seek == set()
    intake.revoked(1)
    intake.seek(consumer, [1])  # not owned any more: forgotten
    assert intake.pending_seek == set()


def _entry(partition: int, offset: int = 0, *, recent: tuple[Any, ...] = ()) -> AgentEntry:
    return AgentEntry(slot=AgentSlot(None, offset, recent), head=b"h", counts=(1, 0, 0),  # type: ignore[arg-type]
                      partition=partition, updated_ms=0)


def _record(partition: int, key: str | None) -> Record:
    return record_from_message(_Msg(partition, 0, key=None if key is None else key.encode()))


def test_cache_wants_what_it_neither_has_nor_knows_absent() -> None:
    cache = AgentCache(max_entries=10)
    batch = {0: [_record(0, "a"), _record(0, "b"), _record(0, None)]}
    assert {k for k, _ in cache.wanted(batch).values()} == {"a", "b", pseudo_key(0)}
    cache.committed(FoldedBatch(entries={"a": _entry(0)}))
    cache._absent[0] = {"b"}
    assert {k for k, _ in cache.wanted(batch).values()} == {pseudo_key(0)}
    assert AgentCache(complete=True).wanted(batch) == {}


def test_cache_keeps_the_most_recently_written_and_drops_a_partition() -> None:
    cache = AgentCache(max_entries=2)
    cache.committed(FoldedBatch(entries={"a": _entry(0), "b": _entry(1, recent=("v",))}))
    assert cache.get("b").slot.recent == ()  # type: ignore[union-attr]
    cache.committed(FoldedBatch(entries={"a": _entry(0, 1), "c": _entry(1)}))  # "b" is the least recent
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (_entry(0, 1), None, _entry(1))
    cache.drop(1)
    assert len(cache) == 1 and cache.get("c") is None
    assert len(AgentCache()) == 0


def test_fault_specs() -> None:
    assert vars(Fault.parse("sigstop:in_transaction:3", points=("before_write", "in_transaction"))) == {
        "point": "in_transaction", "after": 3}
    assert vars(Fault.parse("sigstop:4", points=("after_batch",))) == {"point": "after_batch", "after": 4}
    assert Fault.parse(None, points=("after_batch",)).point is None
    for bad in ("sigkill:4", "sigstop:x", "sigstop:elsewhere:1", "sigstop:4"):
        with pytest.raises(ValueError, match="unknown fault"):
            Fault.parse(bad, points=("before_write", "in_transaction"))


def test_resources_close_everything_and_never_hide_the_error_that_ended_the_block(
        caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []

    def failing_close() -> None:
        closed.append("consumer")
        raise RuntimeError("close failed")

    with pytest.raises(KeyError, match="the original"), caplog.at_level(logging.WARNING, "aosk.resources"):
        with Resources() as r:
            r.callback(closed.append, "pool")
            r.callback(failing_close)
            raise KeyError("the original")
    assert closed == ["consumer", "pool"]
    assert "close failed" in caplog.text
    with pytest.raises(RuntimeError, match="close failed"):  # nothing in flight: the clean-up's own error
        with Resources() as r:
            r.callback(failing_close)


def test_a_holder_closes_what_it_opened_once() -> None:
    closed: list[str] = []

    class Holder(ResourceHolder):
        def __enter__(self) -> Holder:
            with Resources() as r:
                r.callback(closed.append, "pool")
                self._resources = r.pop_all()
            return self

    with pytest.raises(KeyError), Holder() as h:
        raise KeyError("the original")
    h.close()  # closed already: nothing happens
    assert closed == ["pool"]


def test_replay_shares_partitions_by_records_to_fold() -> None:
    from aosk.projectors.replay import share_partitions

    left = {0: 900, 1: 100, 2: 100, 3: 100, 4: 500, 5: 400}
    shares = share_partitions(left, 2)
    assert sorted(p for s in shares for p in s) == sorted(left)  # every partition once
    loads = sorted(sum(left[p] for p in s) for s in shares)
    assert loads == [1000, 1100]  # by count ([0, 2, 4] / [1, 3, 5]) it would be 1500 / 600
    assert share_partitions({0: 5}, 2) == [(0,), ()]


def test_a_batch_that_could_not_be_written_makes_the_next_ones_smaller_until_one_is() -> None:
    from aosk.projectors.runner import MIN_BATCH, next_batch_limit

    limit, seen = 5000, []
    for _ in range(10):  # e.g. each batch outlived transaction_timeout on a loaded server
        limit = next_batch_limit(limit, False, 5000)
        seen.append(limit)
    assert seen[:3] == [2500, 1250, 625] and seen[-1] == MIN_BATCH
    for _ in range(10):
        limit = next_batch_limit(limit, True, 5000)
    assert limit == 5000
    assert next_batch_limit(20, False, 20) == 20  # never above what the options allow
