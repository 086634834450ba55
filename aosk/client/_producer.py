"""A confluent-kafka producer whose deliveries resolve futures, polled by one thread.

Why a thread: delivery callbacks only run inside ``poll``/``flush``; a caller who waits
on a future without polling would wait forever. The thread polls; ``produce`` from any
thread is safe (librdkafka is thread-safe).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aosk.errors import DeliveryError


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker put a record."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """Broker timestamp in ms (LogAppendTime on the journal)."""


class DeliveryFuture:
    """The acknowledgement of one produced record.

    Lighter than ``concurrent.futures.Future`` (which takes a lock per completion): the
    delivery callback only stores the message, and wakes a caller only when one is
    actually waiting on this very record (an event made by ``result``), so many threads
    waiting on their own records (an API's threadpool) are not all woken by every
    acknowledgement. At 100k+ records/s that is the difference between the SDK and the
    raw producer.
    """

    __slots__ = ("_owner", "_msg", "_error", "_done", "_waiters")

    def __init__(self, owner: DeliveringProducer) -> None:
        self._owner = owner
        self._msg: Any = None
        self._error: str | None = None
        self._done = False
        self._waiters: list[threading.Event | _LoopWaker] | None = None

    def _complete(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._error = f"{msg.topic()}: {err.str()}"
        else:
            self._msg = msg
        self._done = True  # before reading _waiters: a waiter adds itself before reading _done
        waiters = self._waiters
        if waiters is not None:
            for waiter in waiters:
                waiter.set()

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = 30.0) -> Delivery:
        """The record's position; raises DeliveryError if the broker refused it, or
        TimeoutError if it is still unacknowledged after ``timeout`` seconds."""
        if not self._done:
            self._owner._wait(self, timeout)
        return self._delivery()

    async def delivered(self, timeout: float = 30.0) -> Delivery:
        """``result`` for asyncio code: awaits the acknowledgement on the running loop
        (the delivery callback wakes it), holding no thread while it waits."""
        if not self._done:
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()
            self._owner._add_waiter(self, _LoopWaker(loop, woken))
            if not self._done:
                try:
                    await asyncio.wait_for(woken, timeout)
                except TimeoutError:
                    raise TimeoutError(f"no acknowledgement from the broker within {timeout}s") from None
        return self._delivery()

    def _delivery(self) -> Delivery:
        if self._error is not None:
            raise DeliveryError(self._error)
        m = self._msg
        return Delivery(m.topic(), m.partition(), m.offset(), m.timestamp()[1])


class _LoopWaker:
    """A waiter (``set()``, like ``threading.Event``) that resolves a future on its event loop."""

    __slots__ = ("_loop", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self._loop, self._future = loop, future

    def set(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._resolve)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(None)


def producer_config(bootstrap: str, *, client_id: str, **overrides: Any) -> dict[str, Any]:
    """The producer settings every AOSK writer shares.

    ``murmur2_random`` makes librdkafka hash keys like the Java client and aiokafka/faust,
    so every producer puts an agent on the same partition. Idempotence with acks=all
    means a retried send is never written twice or reordered.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": 2 * 1024 * 1024 + 64 * 1024,
        "log_level": 3,
    }
    conf.update(overrides)
    return conf


class DeliveringProducer:
    """Produces records and hands back a Future[Delivery] per record."""

    def __init__(self, config: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        from aosk._kafka import KafkaClientLog

        if "logger" not in config:  # a broker outage: a few lines, not one per reconnect
            config = KafkaClientLog(str(config.get("bootstrap.servers", "")), role="client").configure(config)
        self._producer = Producer(config)
        self._waiter_lock = threading.Lock()
        self._closed = threading.Event()
        self._transactions_ready = False
        self._poller = threading.Thread(target=self._poll_loop, name="aosk-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def _add_waiter(self, future: DeliveryFuture, waiter: threading.Event | _LoopWaker) -> None:
        with self._waiter_lock:
            if future._waiters is None:
                future._waiters = [waiter]
            else:
                future._waiters.append(waiter)

    def _wait(self, future: DeliveryFuture, timeout: float | None) -> None:
        waiter = threading.Event()
        self._add_waiter(future, waiter)
        # the waiter is added before _done is read; the callback sets _done before reading
        # the waiters: whichever runs second sees the other, so no acknowledgement is missed.
        if not future._done and not waiter.wait(timeout):
            raise TimeoutError(f"no acknowledgement from the broker within {timeout}s")

    def produce(
        self, topic: str, *, key: bytes | None, value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None, partition: int | None = None,
    ) -> DeliveryFuture:
        if self._closed.is_set():
            raise DeliveryError("the producer is closed")
        future = DeliveryFuture(self)
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=future._complete)
                else:
                    self._producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                                           on_delivery=future._complete)
                return future
            except BufferError:
                # Local queue full: wait for deliveries to drain it (back-pressure, no loss).
                self._producer.poll(0.05)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every record is acknowledged; returns how many are still pending."""
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        return int(remaining)

    @contextmanager
    def transaction(self, timeout: float = 60.0) -> Iterator[None]:
        """Everything produced inside is committed as one Kafka transaction on a clean
        exit (``read_committed`` consumers see all of it at once, or none), aborted on an
        error. Needs a ``transactional.id`` in the producer's config."""
        from confluent_kafka import KafkaException

        try:
            if not self._transactions_ready:
                self._producer.init_transactions(timeout)
                self._transactions_ready = True
            self._producer.begin_transaction()
        except KafkaException as e:
            raise DeliveryError(f"cannot start a Kafka transaction: {e}") from e
        try:
            yield
        except BaseException:
            self._producer.abort_transaction(timeout)
            raise
        try:
            self._producer.commit_transaction(timeout)
        except KafkaException as e:
            raise DeliveryError(f"the Kafka transaction did not commit: {e}") from e

    def close(self, timeout: float = 30.0) -> None:
        if self._closed.is_set():
            return
        remaining = self.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=5)
        if remaining:
            raise DeliveryError(f"{remaining} records were not acknowledged within {timeout:.0f}s")
