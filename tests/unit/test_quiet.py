"""Quiet logs under outages: the dedup-with-backoff core (``aosk._quiet``), the librdkafka
callbacks built on it (``aosk._kafka.KafkaClientLog``) and the outage metric. A fake
clock throughout: nothing sleeps."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aosk._kafka import KafkaClientLog
from aosk._quiet import Backoff, OutageFilter, OutageLog, RepeatFilter, normalise
from aosk.metrics import METRICS, KernelMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines_during(outage: OutageLog, seconds: float, every: float, start: float = 0.0) -> list[str]:
    lines = []
    for i in range(round(seconds / every)):
        line = outage.failure(start + i * every, "Connection refused")
        if line is not None:
            lines.append(line)
    return lines


def test_an_outage_is_a_line_at_its_start_then_lines_at_doubling_intervals_then_one_at_its_end() -> None:
    starts = []
    outage = OutageLog("broker 127.0.0.1:9092", on_outage=lambda: starts.append(1))
    lines = _lines_during(outage, 30.0, every=0.02)  # 1,500 failures in 30 s
    assert lines[0] == "broker 127.0.0.1:9092 unreachable (Connection refused); retrying with backoff"
    # then at 1, 3, 7, 15 s (intervals 1, 2, 4, 8; the next, 16 s later, is past the end)
    assert len(lines) == 5, lines
    assert [line.split("after ")[1].split("s ")[0] for line in lines[1:]] == ["1", "3", "7", "15"]
    assert "49 more failures not logged" in lines[1]
    assert outage.down and outage.failures == 1500
    assert outage.success(31.5) == "broker 127.0.0.1:9092 reachable again after 31.5s unreachable (1500 failures)"
    assert not outage.down and outage.success(32.0) is None
    assert starts == [1]
    # the next outage starts afresh, with a line and a count
    assert outage.failure(100.0, "x") == "broker 127.0.0.1:9092 unreachable (x); retrying with backoff"
    assert starts == [1, 1]


def test_the_interval_is_capped() -> None:
    outage = OutageLog("PostgreSQL h:5432", backoff=Backoff(first_s=1.0, max_s=60.0))
    lines = _lines_during(outage, 3600.0, every=0.5)
    gaps = [b - a for a, b in zip(_times(lines[1:]), _times(lines[2:]), strict=False)]
    assert max(gaps) == 60 and gaps[-1] == 60
    assert len(lines) < 70  # an hour: 1 + 6 growing + ~58 capped


def _times(lines: list[str]) -> list[int]:
    return [int(line.split("after ")[1].split("s ")[0]) for line in lines]


def test_a_lone_failure_is_one_line_and_no_outage_means_no_recovery_line() -> None:
    outage = OutageLog("broker b:1")
    assert outage.success(5.0) is None
    assert outage.failure(10.0) == "broker b:1 unreachable; retrying with backoff"
    assert outage.failure(10.5) is None
    line = outage.failure(11.2)
    assert line is not None and "1 more failure not logged" in line


def _record(name: str, msg: str, created: float, *args: Any, level: int = logging.WARNING) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, args or None, None)
    r.created = created
    return r


def test_repeat_filter_lets_one_line_per_growing_interval_through_and_counts_the_others() -> None:
    f = RepeatFilter()
    passed = [r for t in range(0, 100) if f.filter(r := _record("x", "timed out after %dms", t * 0.1, t))]
    # t = 0, 1.0, 3.0, 7.0 s
    assert [round(r.created, 1) for r in passed] == [0.0, 1.0, 3.0, 7.0]
    assert passed[1].getMessage() == "timed out after 10ms (repeated; 9 similar lines not logged)"
    assert f.filter(_record("x", "another line", 9.95))
    assert f.filter(_record("y", "timed out after 1ms", 9.95))  # another logger's line counts apart
    assert f.filter(_record("x", "timed out after 1ms", 9.95 + 301))  # forgotten after forget_s
    assert normalise("after 12ms at 3.5 s") == "after #ms at # s"


def test_outage_filter_turns_a_pools_warnings_into_the_outages_lines() -> None:
    outage = OutageLog("PostgreSQL h:5432")
    f = OutageFilter(outage, lambda r: r.msg.startswith("error connecting"))
    first = _record("psycopg.pool", "error connecting in %r: %s", 0.0, "p", "Connection refused\n\tIs the server...")
    assert f.filter(first)
    assert first.getMessage() == ("PostgreSQL h:5432 unreachable (error connecting in 'p': Connection refused Is the "
                                  "server...); retrying with backoff")
    assert not f.filter(_record("psycopg.pool", "error connecting in %r: %s", 0.5, "p", "again"))
    assert f.filter(_record("psycopg.pool", "discarding broken connection: %s", 0.6, "c"))  # not ours: untouched
    assert outage.failures == 2


class _Err:
    def __init__(self, name: str, text: str, fatal: bool = False) -> None:
        self._name, self._text, self._fatal = name, text, fatal

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return self._fatal


REFUSED = "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: " \
          "Connection refused (after 0ms in state CONNECT)"


def _stats(*brokers: tuple[str, str]) -> str:
    import json

    return json.dumps({"brokers": {f"{n}/1": {"nodename": n, "state": s} for n, s in brokers}})


def test_kafka_client_log_collapses_a_broker_outage_across_clients(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    counted: list[int] = []
    kl = KafkaClientLog("127.0.0.1:9092", role="worker", clock=clock, on_outage=lambda: counted.append(1))
    conf = kl.configure({"bootstrap.servers": "127.0.0.1:9092", "log_level": 3})
    assert conf["logger"] is kl and conf["log_level"] == 3 and conf["statistics.interval.ms"] == 1000
    with caplog.at_level(logging.INFO, logger="aosk.kafka"):
        for i in range(1500):  # 30 s of librdkafka's reconnects, from a producer's and a consumer's log and errors
            clock.now = 1000.0 + i * 0.02
            kl.log(logging.ERROR, "%s [%s] %s", "FAIL", f"rdkafka#{'producer' if i % 2 else 'consumer'}-1", REFUSED)
            if i % 10 == 0:
                kl.error_cb(_Err("_TRANSPORT", REFUSED.split("]: ", 1)[1]))
                kl.error_cb(_Err("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
                kl.stats_cb(_stats(("127.0.0.1:9092", "CONNECT")))
        assert kl.down == ["127.0.0.1:9092"]
        clock.now += 1.0
        kl.stats_cb(_stats(("127.0.0.1:9092", "UP")))
        # failures one client still had queued, handed over just after the recovery: no new outage
        kl.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", REFUSED)
        kl.stats_cb(_stats(("127.0.0.1:9092", "UP")))
        kl.log(logging.WARNING, "%s [%s] %s", "MAXPOLL", "rdkafka#consumer-1", "poll interval exceeded")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7, lines
    assert lines[0] == ("broker 127.0.0.1:9092 unreachable (127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 "
                        "failed: Connection refused (after 0ms in state CONNECT)); retrying with backoff")
    assert lines[5].startswith("broker 127.0.0.1:9092 reachable again after 31.0s unreachable")
    assert lines[6] == "MAXPOLL [rdkafka#consumer-1] poll interval exceeded"
    assert counted == [1] and kl.down == []


def test_kafka_client_log_a_dead_broker_among_live_ones_stays_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    kl = KafkaClientLog("a:1,b:2", role="projector", clock=clock, on_outage=lambda: None)
    with caplog.at_level(logging.INFO, logger="aosk.kafka"):
        for i in range(60):  # b:2 refuses every 5 s for 5 minutes; a:1 answers
            clock.now = 1000.0 + i * 5
            kl.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "b:2/2: Connect to ipv4#10.0.0.2:2 failed: refused")
            kl.stats_cb(_stats(("a:1", "UP"), ("b:2", "CONNECT")))
        assert kl.down == ["b:2"]
        clock.now += 20  # no failure for 20 s while a:1 answers: b:2 is back (or no longer used)
        kl.stats_cb(_stats(("a:1", "UP")))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("broker b:2 unreachable") and lines[-1].startswith("broker b:2 reachable again")
    assert len(lines) < 15, lines


def test_fatal_and_other_client_errors_pass_through() -> None:
    logger = logging.getLogger("test.quiet.kafka")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    kl = KafkaClientLog("h:1", role="client", logger=logger, clock=Clock(), on_outage=lambda: None)
    kl.error_cb(_Err("_FENCED", "producer fenced", fatal=True))
    kl.error_cb(_Err("TOPIC_AUTHORIZATION_FAILED", "not allowed"))
    assert [(r.levelno, r.getMessage()) for r in seen] == [
        (logging.ERROR, "client: producer fenced (_FENCED)"),
        (logging.WARNING, "client: not allowed (TOPIC_AUTHORIZATION_FAILED)"),
    ]
    assert kl.down == []


def test_outages_are_counted_per_dependency_and_role() -> None:
    registry = CollectorRegistry()
    metrics = KernelMetrics(registry)  # its own registry: as many as a test wants
    KernelMetrics(CollectorRegistry())
    outage = OutageLog("broker h:1", on_outage=metrics.outage_counter("kafka", "worker").inc)
    outage.failure(0.0)
    outage.failure(1.0)
    outage.success(2.0)
    outage.failure(3.0)
    assert registry.get_sample_value("aosk_dependency_unavailable_total",
                                     {"dependency": "kafka", "role": "worker"}) == 2
    assert registry.get_sample_value("aosk_dependency_unavailable_total",
                                     {"dependency": "postgres", "role": "worker"}) is None
    assert METRICS.dependency_unavailable is not metrics.dependency_unavailable


def test_a_consumer_gets_the_error_callback_only_and_records_appended_after_the_start_end_an_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    kl = KafkaClientLog("h:1", role="projector", clock=clock, on_outage=lambda: None)
    conf = kl.configure_consumer({"bootstrap.servers": "h:1", "log_level": 3})
    assert conf["error_cb"] == kl.error_cb and conf["log_level"] == 2
    assert "logger" not in conf and "stats_cb" not in conf  # see KafkaClientLog's doc: these would abort
    with caplog.at_level(logging.INFO, logger="aosk.kafka"):
        kl.error_cb(_Err("_TRANSPORT", "h:1/1: Connect to ipv4#10.0.0.1:1 failed: Connection refused"))
        kl.reached(appended_ms=int((clock.now - 5) * 1000))  # fetched before the outage
        assert kl.down == ["h:1"]
        clock.now += 40
        kl.reached(appended_ms=int((clock.now - 1) * 1000))
        assert kl.down == []
        kl.error_cb(_Err("_TRANSPORT", "h:1/1: Connect to ipv4#10.0.0.1:1 failed: Connection refused"))
        assert kl.down == []  # within the grace after a recovery: a late report of the old outage
        clock.now += 11  # past the grace: a new outage
        kl.error_cb(_Err("_TRANSPORT", "h:1/1: Connect to ipv4#10.0.0.1:1 failed: Connection refused"))
        kl.reached()  # an assignment: the cluster answered
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "broker h:1 unreachable", "broker h:1 reachable again after 40.0s unreachable",
        "broker h:1 unreachable", "broker h:1 reachable again after 0.0s unreachable"]


def test_postgres_outage_takes_the_pools_own_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``PostgresOutage.pool_filter`` matches psycopg_pool's "error connecting" warning by its
    format string: if a psycopg_pool release rewords it, this test says so (the warnings
    would then pass unfiltered, one per reconnect)."""
    import inspect

    import psycopg_pool.pool

    from aosk.projectors.db import PostgresOutage

    assert '"error connecting in %r: %s"' in inspect.getsource(psycopg_pool.pool)
    counted: list[int] = []
    pg = PostgresOutage("postgresql://u@db.example:6543/x", role="projector", pool_name="aosk-projector-aosk",
                        logger=logging.getLogger("aosk.projector"), on_outage=lambda: counted.append(1))
    pool_log = logging.getLogger("psycopg.pool")
    pool_log.addFilter(pg.pool_filter)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(5):
                pool_log.warning("error connecting in %r: %s", "aosk-projector-aosk", "Connection refused")
            pool_log.warning("error connecting in %r: %s", "another-pool", "Connection refused")
            pg.failed(OSError("connection failed"))
            pg.answered()
            pg.answered()
    finally:
        pool_log.removeFilter(pg.pool_filter)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("PostgreSQL db.example:6543 unreachable (error connecting in 'aosk-projector-aosk': "
                        "Connection refused); retrying with backoff")
    assert lines[1] == "error connecting in 'another-pool': Connection refused"
    assert lines[2].startswith("PostgreSQL db.example:6543 reachable again after") and len(lines) == 3
    assert counted == [1]
