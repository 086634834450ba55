"""Waiting for the kernel's verdict on an event: ``VerdictWatcher``.

The verdict of a journal record is a ``Transition`` on ``aosk.agent-transitions``,
published by the worker that folded it, usually milliseconds after the event was
produced. To never miss a fast one, the watcher is positioned BEFORE the event is
produced: at construction it reads the current end offset of every partition of the
verdict topic and assigns exactly those offsets (concrete numbers, not "latest", which
librdkafka would resolve only at the first fetch, possibly after the verdict was
written). A background thread then reads everything published from that point on into
a bounded map ``event_id -> Transition``, so a verdict that arrives before anybody
waits for it is kept until asked for.

    with KernelClient.from_settings(settings, watch_verdicts=True) as kernel:
        t = kernel.send_and_wait(event, timeout=10)   # or:
        pending = kernel.send(event); t = kernel.wait_for_verdict(pending.event_id, 10)

The first verdict seen for an event id wins (a worker may publish a record's verdict
again after a crash; repeats are byte-identical). A client retry that re-produced the
same event id gets a second record whose verdict is ``duplicate``: ``verdicts(event_id)``
returns all of them in arrival order.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from types import TracebackType
from typing import Any

from aosk._kafka import KafkaClientLog, cluster_metadata, consume_ready, high_watermark
from aosk.config import KafkaSettings
from aosk.errors import AoskError, DecodeError
from aosk.events import Transition, decode_transition

__all__ = ["VerdictWatcher"]


class VerdictWatcher:
    """Reads verdicts published after its construction; ``wait`` returns one by event id."""

    def __init__(self, *, bootstrap: str, kafka: KafkaSettings, max_kept: int = 200_000,
                 poll_interval: float = 0.1) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._topic = kafka.transitions_topic
        self._max_kept = max_kept
        self._poll_interval = poll_interval
        self._seen: OrderedDict[str, list[Transition]] = OrderedDict()
        self._cond = threading.Condition()
        self._error: str | None = None
        self._closed = threading.Event()
        self._quiet = KafkaClientLog(bootstrap, role="client")  # an outage: a few lines, not one per reconnect
        self._consumer = Consumer(self._quiet.configure_consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"aosk-verdicts-{uuid.uuid4().hex[:12]}",  # assign() only, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }))
        try:
            md = cluster_metadata(self._consumer, bootstrap, self._topic, timeout=10).topics.get(self._topic)
            if md is None or md.error is not None:
                raise AoskError(f"verdict topic {self._topic} does not exist; run `aosk topics ensure`")
            start = []
            for p in sorted(md.partitions):
                high = high_watermark(self._consumer, self._topic, p)
                start.append(TopicPartition(self._topic, p, high))
            self._consumer.assign(start)
        except BaseException:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._run, name="aosk-verdicts", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> VerdictWatcher:
        from aosk.endpoints import resolve_endpoints

        return cls(bootstrap=resolve_endpoints(settings).bootstrap, kafka=settings.kafka, **kwargs)

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                msgs = consume_ready(self._consumer, 1000, timeout=self._poll_interval)
                if not msgs:
                    continue
                if msgs[-1].error() is None:  # appended after an outage began: it is over
                    self._quiet.reached(msgs[-1].timestamp()[1])
                got: list[Transition] = []
                for m in msgs:
                    if m.error():
                        continue  # transient fetch errors are retried by librdkafka
                    try:
                        got.append(decode_transition(m.value() or b""))
                    except DecodeError:
                        continue  # not a verdict this SDK can read: nobody can wait for it
                self._keep(got)
        except Exception as e:  # noqa: BLE001 - reported to every waiter
            with self._cond:
                self._error = f"{type(e).__name__}: {e}"
                self._cond.notify_all()
        finally:
            self._consumer.close()

    def _keep(self, transitions: list[Transition]) -> None:
        with self._cond:
            for t in transitions:
                if t.event_id is None:
                    continue
                seen = self._seen.get(t.event_id)
                if seen is None:
                    self._seen[t.event_id] = [t]
                elif all(s.journal_partition != t.journal_partition or s.journal_offset != t.journal_offset
                         for s in seen):
                    seen.append(t)
            while len(self._seen) > self._max_kept:
                self._seen.popitem(last=False)
            self._cond.notify_all()

    def wait(self, event_id: str, timeout: float = 30.0) -> Transition:
        """The first verdict on ``event_id``; TimeoutError if none within ``timeout``.

        Only events produced after this watcher was created are guaranteed to be seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = self._seen.get(event_id)
                if seen:
                    return seen[0]
                if self._error is not None:
                    raise AoskError(f"the verdict watcher stopped: {self._error}")
                if self._closed.is_set():
                    raise AoskError("the verdict watcher is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no verdict for event {event_id} within {timeout:g}s; are workers running "
                        f"(`aosk worker`) and is the event's partition stopped (see the worker log)?"
                    )
                self._cond.wait(left)

    def verdicts(self, event_id: str) -> list[Transition]:
        """Every distinct verdict seen so far for ``event_id`` (one per journal record)."""
        with self._cond:
            return list(self._seen.get(event_id, ()))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def __enter__(self) -> VerdictWatcher:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
