"""Small confluent-kafka helpers shared by the SDK and the journal reader."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from aosk._quiet import Backoff, OutageLog, RepeatFilter
from aosk.errors import KafkaUnavailable

_CLIENT_LOG = logging.getLogger("aosk.kafka.client")


def _client_error(err: Any) -> None:
    _CLIENT_LOG.debug("librdkafka: %s", err)


def quiet(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for a client of a one-shot command, which says what failed itself
    (``KafkaUnavailable``, an ``AoskError``): librdkafka writes no log lines of its own
    to stderr (``log_level`` 0: not even its per-retry connection errors), and its
    error events go to the debug log of ``aosk.kafka.client`` (``error_cb``) instead of
    being logged by librdkafka."""
    return {**config, "log_level": 0, "error_cb": _client_error}

def side_consumer(config: dict[str, Any]) -> Any:
    """A second consumer of the same cluster and group that never subscribes, for the
    blocking calls a rebalance callback makes (``list_topics``, watermarks, committed
    offsets).

    Why not the consumer itself: confluent-kafka keeps one per-thread call state per
    client, set by a blocking call such as ``consume`` and cleared when any blocking call
    on that client returns. A blocking call on the consumer made inside a rebalance
    callback (which runs inside ``consume``) therefore clears the state of the
    ``consume`` still running, and a later callback in that ``consume`` (an error event)
    aborts the process (``CallState_get: Assertion `cs != NULL' failed``, seen on a
    projector just after an assignment). Calls on another client leave it alone."""
    from confluent_kafka import Consumer

    side = {k: v for k, v in config.items()
            if k in ("bootstrap.servers", "group.id") or k.startswith(("security.", "sasl.", "ssl."))}
    side["client.id"] = f"{config.get('client.id', 'aosk')}-metadata"
    side["enable.auto.commit"] = False
    return Consumer(quiet(side))


# librdkafka's local error names for "no broker answered" (as opposed to a broker that
# answered with an error): transport failure, timeout, every broker down, bad address.
_UNREACHABLE = frozenset({"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE"})


def cluster_metadata(client: Any, bootstrap: str, topic: str | None = None, *, timeout: float) -> Any:
    """``client.list_topics(topic)`` of a consumer, producer or admin client; a broker that
    cannot be reached at ``bootstrap`` raises ``KafkaUnavailable``.

    librdkafka retries a refused connection until ``timeout``. If the first second brings
    no answer and every bootstrap address refuses a TCP connection, nothing listens there:
    the error is raised then, not after the whole timeout. A slow broker still gets all of it.
    """
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    try:
        return client.list_topics(topic, timeout=min(timeout, 1.0))
    except KafkaException as e:
        err = e.args[0]
        if err.name() not in _UNREACHABLE:
            raise
        if _all_refuse(bootstrap) or time.monotonic() >= deadline:
            raise KafkaUnavailable(bootstrap, err.str()) from e
    try:
        return client.list_topics(topic, timeout=max(0.0, deadline - time.monotonic()))
    except KafkaException as e:
        err = e.args[0]
        if err.name() in _UNREACHABLE:
            raise KafkaUnavailable(bootstrap, err.str()) from e
        raise


def _all_refuse(bootstrap: str) -> bool:
    """Every ``host:port`` of ``bootstrap`` refuses a TCP connection (anything else, such
    as a timeout or a name that does not resolve, is not proof that nothing listens)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return False
        except ConnectionRefusedError:
            continue
        except (OSError, ValueError):
            return False
    return True


def high_watermark(consumer: Any, topic: str, partition: int, *, timeout: float = 30.0) -> int:
    """The offset the next record of ``topic[partition]`` will get.

    Retries while the partition has no leader yet: right after a topic is created the
    metadata can name a leader a moment before that broker serves the partition
    (NOT_LEADER_FOR_PARTITION), and after a broker restart for a while too.
    """
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout
    while True:
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(high)
        except KafkaException as e:
            err = e.args[0]
            if not err.retriable() and err.name() not in {"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
                                                         "UNKNOWN_TOPIC_OR_PART"}:
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)  # the broker is electing a leader; ask again shortly


def consume_ready(consumer: Any, max_records: int, *, timeout: float, linger: float = 0.0) -> list[Any]:
    """Up to ``max_records`` records: waits at most ``timeout`` for the first one, then at
    most ``linger`` more for others to fill the batch.

    ``consume(n, timeout)`` alone returns only when n records arrived or the timeout
    passed, so a lone record would wait out the whole timeout: a consumer that answers
    (or measures) in real time must not ask for a batch that way.
    """
    msgs: list[Any] = consumer.consume(1, timeout=timeout)
    if msgs and max_records > 1:
        msgs.extend(consumer.consume(max_records - 1, timeout=linger))
    return msgs


# -- quiet client logs -------------------------------------------------------------------

# librdkafka's log facilities of a broker connection failing ("Connect to ... failed:
# Connection refused", "Disconnected", "Receive failed", ...).
_BROKER_DOWN_FACILITIES: Final = frozenset({"FAIL", "BROKERFAIL"})
# "127.0.0.1:9092/1: Connect to ..." or "GroupCoordinator: 127.0.0.1:9092: Connect to ...".
_BROKER_ADDRESS: Final = re.compile(r"(?:^|\s)([^\s/]+:\d+)(?:/\w+)?: ")
_THREAD_PREFIX: Final = re.compile(r"^\[thrd:[^\]]*\]: ")
_QUIET_BEFORE_RECOVERED_S: Final = 15.0
"""An address with no failure for this long, while another broker answers, counts as
recovered (librdkafka retries a dead broker at least every ``reconnect.backoff.max.ms``,
10 s by default; a bootstrap alias no longer used may never show up again)."""


_RECOVERY_GRACE_S: Final = 10.0
"""Failures reported this soon after a recovery do not start a new outage: each client
hands over its logs only when polled, so a client that sat in another one's ``flush``
delivers the failures of the outage just ended after the first client saw the broker up."""


class KafkaClientLog:
    """The log, error and statistics callbacks of one process's librdkafka clients, so a
    broker outage makes a few lines instead of one per refused reconnect.

    Pass a producer's config through ``configure``, a consumer's through
    ``configure_consumer``. Connection failures, from the log (``FAIL``) or the error
    callback (``_TRANSPORT``, ...), feed one ``OutageLog`` per broker address, shared by
    the process's clients: a line when the outage starts, lines at growing intervals while
    it lasts, a line with its duration when a producer's statistics (every second) show
    that broker up again, or when the application calls ``reached`` (records consumed, a
    partition assignment). Other lines go to ``logger`` with repeats dropped
    (``RepeatFilter``). Outages are counted in
    ``aosk_dependency_unavailable_total{dependency="kafka", role}``.

    librdkafka hands logs, errors and statistics to Python only inside ``poll``,
    ``consume`` and ``flush``, so these run on the caller's threads; a lock orders them.
    ``clock`` gives wall-clock seconds (``reached`` compares outages with record
    timestamps); tests pass a fake one.

    Why a consumer gets only the error callback: confluent-kafka finds the Python state
    of a callback in a per-client thread-local that every blocking call of that client
    clears when it returns. A consumer's rebalance callbacks make such calls
    (``committed``, ``list_topics``), so a log or statistics callback served later in
    the same ``consume`` finds nothing and the process aborts (``CallState_get:
    Assertion `cs != NULL' failed``, seen here in a worker after a broker restart). The
    error callback is registered by confluent-kafka whether or not one is given, so
    giving one adds no such risk; the consumer's own log is lowered to critical lines
    (its connection failures arrive as errors anyway). A producer's callbacks run in
    ``poll``/``flush``, which nothing calls from inside them.
    """

    def __init__(self, bootstrap: str, *, role: str, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.time, backoff: Backoff | None = None,
                 on_outage: Callable[[], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.role = role
        self.logger = logger or logging.getLogger("aosk.kafka")
        self._clock = clock
        self._backoff = backoff
        if on_outage is None:
            from aosk.metrics import METRICS

            on_outage = METRICS.outage_counter("kafka", role).inc
        self._on_outage = on_outage
        self._outages: dict[str, OutageLog] = {}
        self._last_failure: dict[str, float] = {}
        self._recovered: dict[str, float] = {}
        self._repeats = RepeatFilter(backoff=backoff)
        self._lock = threading.Lock()

    def configure(self, config: dict[str, Any]) -> dict[str, Any]:
        """A producer's (or admin client's) ``config`` with this object's log, error and
        statistics callbacks (a new dict; ``log_level`` is kept)."""
        return {**config, "logger": self, "error_cb": self.error_cb, "stats_cb": self.stats_cb,
                "statistics.interval.ms": 1000}

    def configure_consumer(self, config: dict[str, Any]) -> dict[str, Any]:
        """A consumer's ``config`` with this object's error callback, and librdkafka's own
        log limited to critical lines (the class doc says why no more)."""
        return {**config, "error_cb": self.error_cb, "log_level": min(int(config.get("log_level", 6)), 2)}

    def reached(self, appended_ms: int | None = None) -> None:
        """The application got an answer from the cluster: every outage ends. With
        ``appended_ms`` (a consumed record's broker timestamp), only the outages that
        started before it: records fetched before the outage prove nothing."""
        with self._lock:
            if not any(o.down for o in self._outages.values()):
                return
            addresses = {a for a, o in self._outages.items() if o.down and (
                appended_ms is None or (o.since is not None and o.since < appended_ms / 1000))}
        self.answering(addresses)

    @property
    def down(self) -> list[str]:
        """The broker addresses in an outage now."""
        with self._lock:
            return sorted(k for k, o in self._outages.items() if o.down)

    # -- librdkafka's callbacks ------------------------------------------------------------

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """librdkafka's log line (confluent-kafka calls ``logger.log(level, "%s [%s] %s",
        facility, client name, message)``)."""
        facility = str(args[0]) if args else ""
        message = str(args[-1]) if args else fmt
        if facility in _BROKER_DOWN_FACILITIES:
            self.failure(message)
        else:
            self._emit(level, fmt, args)

    def error_cb(self, err: Any) -> None:
        if err.name() == "_ALL_BROKERS_DOWN":
            return  # "1/1 brokers are down": each broker's own failures are logged already
        if err.name() in _UNREACHABLE and not err.fatal():
            self.failure(err.str())
        else:
            self._emit(logging.ERROR if err.fatal() else logging.WARNING, "%s: %s (%s)",
                       (self.role, err.str(), err.name()))

    def stats_cb(self, stats_json: str) -> None:
        """Every second: ends the outages of the addresses that answer again."""
        with self._lock:
            if not any(o.down for o in self._outages.values()):
                return
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
        except ValueError:
            return
        up = {b.get("nodename") for b in brokers if b.get("state") == "UP"}
        self.answering(up)

    # -- the outage bookkeeping (also for tests) ------------------------------------------

    def failure(self, message: str) -> None:
        """A connection failure, as librdkafka words it."""
        message = _THREAD_PREFIX.sub("", message)
        m = _BROKER_ADDRESS.search(message)
        address = m.group(1) if m else self.bootstrap
        now = self._clock()
        with self._lock:
            outage = self._outages.get(address)
            if outage is None:
                what = f"broker {address}" if "," not in address else f"brokers {address}"
                outage = self._outages[address] = OutageLog(what, backoff=self._backoff, on_outage=self._on_outage)
            self._last_failure[address] = now
            recovered = self._recovered.get(address)
            if not outage.down and recovered is not None and now - recovered < _RECOVERY_GRACE_S:
                return  # served late from another client's queue, or a last gasp: not a new outage
            line = outage.failure(now, message)
        if line is not None:
            self.logger.warning("%s", line)

    def answering(self, up: set[Any]) -> None:
        """The broker addresses that are connected now (``nodename`` in the statistics)."""
        if not up:
            return
        now = self._clock()
        lines = []
        with self._lock:
            for address, outage in self._outages.items():
                if not outage.down:
                    continue
                if address in up or now - self._last_failure.get(address, now) >= _QUIET_BEFORE_RECOVERED_S:
                    line = outage.success(now)
                    self._recovered[address] = now
                    if line is not None:
                        lines.append(line)
        for line in lines:
            self.logger.warning("%s", line)

    def _emit(self, level: int, fmt: str, args: tuple[Any, ...]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        record = self.logger.makeRecord(self.logger.name, level, "(librdkafka)", 0, fmt, args, None)
        with self._lock:
            passes = self._repeats.filter(record)
        if passes:
            self.logger.handle(record)
