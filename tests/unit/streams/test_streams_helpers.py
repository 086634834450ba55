"""Small pure parts of the worker: the deadline index and partition time, sent timeouts,
dead-letter headers, stop messages, a consumed message as a fold input, and the layering
(the processing modules import no Kafka client)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from aosk.errors import Undecodable, UnknownFingerprint, UnknownFoldVersion
from aosk.kernel import OpenCall, Record, placeholder
from aosk.kernel.state import Calls
from aosk.partitioning import partition_for
from aosk.streams.pausing import PartitionStops, describe_stop
from aosk.streams.records import Sink, dead_letter_headers, outputs
from aosk.streams.timeouts import DeadlineIndex, PartitionClock, SentTimeouts, caught_up


def _with_calls(*deadlines: int):
    st = placeholder("a", 1)
    calls = tuple(OpenCall(call_id=f"c{i}", kind="llm", deadline_ms=d, request_event_id=f"r{i}")
                  for i, d in enumerate(deadlines))
    return replace(st, calls=Calls(open=calls))


def test_deadline_index() -> None:
    idx = DeadlineIndex()
    idx.update(0, "a", _with_calls(500, 200))
    idx.update(0, "b", _with_calls(300))
    idx.update(1, "c", _with_calls(100))
    assert idx.due(0, 250) == ["a"] and idx.due(0, 1_000) == ["a", "b"] and idx.earliest(0) == 200
    idx.update(0, "a", _with_calls())
    assert idx.due(0, 1_000) == ["b"]
    idx.drop({0})
    assert idx.due(0, 1_000) == [] and len(idx) == 1
    idx.rebuild(1, [("d", _with_calls(50))])
    assert idx.due(1, 1_000) == ["d"]


def test_partition_time_is_journal_time_while_behind_and_wall_clock_once_caught_up() -> None:
    clock = PartitionClock()
    assert clock.time_ms(0, caught_up=False, now_ms=9_000) is None
    assert clock.time_ms(0, caught_up=True, now_ms=9_000) == 9_000
    clock.observe(0, 5_000)
    clock.observe(0, 4_000)
    assert clock.time_ms(0, caught_up=False, now_ms=9_000) == 5_000
    assert clock.time_ms(0, caught_up=True, now_ms=9_000) == 9_000
    assert clock.time_ms(0, caught_up=True, now_ms=1_000) == 5_000  # never before the journal
    assert caught_up(7, 7) and not caught_up(6, 7) and not caught_up(None, 7) and not caught_up(7, None)


def test_sent_timeouts_are_not_repeated_every_tick() -> None:
    sent = SentTimeouts(resend_after_s=30)
    assert sent.should_send("e", 0.0) and not sent.should_send("e", 10.0) and sent.should_send("e", 31.0)


def test_dead_letter_headers_and_stop_messages() -> None:
    r = Record("k", 2, 9, 1234, b"x", None, Undecodable("not single-object encoded"))
    h = dict(dead_letter_headers(r, topic="j"))
    assert h["aosk-reason"] == b"undecodable" and h["aosk-detail"] == b"not single-object encoded"
    assert (h["aosk-source-partition"], h["aosk-source-offset"], h["aosk-source-timestamp"]) == (b"2", b"9", b"1234")
    s = describe_stop("j", 2, 9, UnknownFingerprint(b"\x01" * 8))
    assert s.reason == "unknown_fingerprint" and "0101010101010101" in s.message and "j[2] at offset 9" in s.message
    assert describe_stop("j", 2, 9, UnknownFoldVersion(7, known=(1,))).reason == "unknown_fold_version"
    assert describe_stop("j", 2, 9, KeyError("x")).reason == "error"
    stops = PartitionStops()
    assert stops.stop(s) and not stops.stop(s) and stops.stopped(2) is s
    stops.clear({2})
    assert stops.stopped(2) is None


def _judged(record: Record, partitions: int):
    from aosk.events import KernelUpgraded
    from aosk.kernel import apply, fold_args, fold_key

    marker = Record(None, record.partition, 0, 1, b"m", KernelUpgraded(
        event_id="00000000-0000-4000-8000-000000000001", agent_id=f"~p{record.partition}", tenant_id="~kernel",
        occurred_at=0, origin="kernel", fold_version=2, partitions=partitions))
    ps, _ = apply(None, marker, version=1)
    return apply(None, record, **fold_args(ps.state)._asdict()), fold_key(record, ps.state)


def test_wrong_partition_and_undecodable_records_are_dead_lettered() -> None:
    from aosk.events import AgentStarted

    n = 4
    key = next(k for k in (f"a{i}" for i in range(100)) if partition_for(k, n) != 1)
    started = AgentStarted(event_id="00000000-0000-4000-8000-000000000002", agent_id=key, tenant_id="t",
                           occurred_at=0, origin="client")
    misrouted = Record(key, 1, 5, 77, b"bytes", started)
    (_, v), routed_to = _judged(misrouted, n)
    assert (v.reason, routed_to, v.agent_id) == ("wrong_partition", "~p1", "~p1")
    out = outputs(misrouted, v, raw_key=b"raw-key", journal_topic="j", journal_partitions=n)
    assert [o.sink for o in out] == [Sink.TRANSITIONS, Sink.DEAD_LETTERS]
    dl = out[1]
    assert (dl.key, dl.partition, dl.value) == (b"raw-key", 1, b"bytes")
    h = dict(dl.headers)
    assert h["aosk-reason"] == b"wrong_partition" and f"partition {partition_for(key, n)}".encode() in h["aosk-detail"]
    assert (h["aosk-source-topic"], h["aosk-source-partition"], h["aosk-source-offset"]) == (b"j", b"1", b"5")
    home = Record(key, partition_for(key, n), 5, 77, b"bytes", started)  # on its partition: not_spawned, kept
    (_, v2), _ = _judged(home, n)
    assert v2.reason == "not_spawned"
    assert [o.sink for o in outputs(home, v2, raw_key=b"k", journal_topic="j", journal_partitions=n)] == [
        Sink.TRANSITIONS]
    bad = Record(key, partition_for(key, n), 6, 78, b"junk", None, Undecodable("truncated"))
    (_, v3), _ = _judged(bad, n)
    dl3 = outputs(bad, v3, raw_key=b"k", journal_topic="j", journal_partitions=n)[-1]
    assert dl3.sink == Sink.DEAD_LETTERS and dict(dl3.headers)["aosk-reason"] == b"undecodable"



PROCESSING = ("processor", "offsets", "snapshots", "records", "timeouts", "pausing", "forks")


def test_processing_modules_import_no_kafka_client() -> None:
    code = ("import sys;" + ";".join(f"import aosk.streams.{m}" for m in PROCESSING) +
            ";print(sorted(m for m in ('confluent_kafka', 'faust', 'aiokafka') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sent_timeouts_are_forgotten_after_resend_after() -> None:
    sent = SentTimeouts(resend_after_s=30)
    assert sent.should_send("a", 0.0) and sent.should_send("b", 20.0)
    sent.prune(35.0)  # "a" forgotten, "b" still recent
    assert not sent.should_send("b", 36.0) and sent.should_send("a", 36.0)


def test_a_consumed_message_becomes_the_shared_record() -> None:
    from streams_support import FakeMessage

    from aosk.events import AgentStarted, encode
    from aosk.journal import record_from_message

    ev = AgentStarted(event_id="00000000-0000-4000-8000-000000000001", agent_id="a", tenant_id="t",
                      occurred_at=0, origin="client", correlation_id=None, causation_id=None)
    ts_ms = 1_795_597_176_801
    r = record_from_message(FakeMessage("j", 4, 17, b"a", encode(ev), ts_ms))
    assert (r.key, r.partition, r.offset, r.timestamp, r.event, r.error) == ("a", 4, 17, ts_ms, ev, None)
    garbage = record_from_message(FakeMessage("j", 1, 0, None, None, 1))
    assert garbage.key is None and garbage.event is None and garbage.error is not None and garbage.agent_key == "~p1"
