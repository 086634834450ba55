"""Small confluent-kafka helpers shared by the SDK and the journal reader."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

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
