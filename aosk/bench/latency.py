"""Open-loop produce -> verdict latency of ``aosk bench worker``.

A producer thread sends the workload's events at their scheduled times
(``t0 + i / rate``) and never waits for a verdict; when it falls behind it sends late,
but each latency is still measured from the record's *scheduled* time, so a worker that
cannot keep up shows its queueing delay instead of slowing the offered load down
(closed-loop measurement would hide exactly that). The bench's ``Coverage`` thread
follows the verdict topic; latency = when the verdict was read - the scheduled send
time, matched by event id. Undecodable records of the workload are sent too but have
no event id to match.

Before the clock starts, the first ``warmup`` events are sent and their verdicts awaited,
so the worker's start-up (group join, changelog recovery) is not measured as latency.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aosk.errors import AoskError
from aosk.workload import Item, RawRecord


@dataclass
class OpenLoopResult:
    offered: float
    """Events per second the schedule offered."""
    sent: int
    send_seconds: float
    """From the first scheduled send to the last actual one (> count / rate when the producer fell behind)."""
    latencies: list[float] = field(default_factory=list)
    """Seconds, one per matched event; ``inf`` for an event with no verdict when the wait ended."""
    waited: float = 0.0
    """Seconds waited for the last verdicts after the last send."""

    @property
    def missing(self) -> int:
        return sum(1 for x in self.latencies if math.isinf(x))

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (``q`` in 0..1), ``inf`` if it falls on a missing verdict."""
        xs = sorted(self.latencies)
        if not xs:
            return math.nan
        return xs[max(0, math.ceil(q * len(xs)) - 1)]


def encoded(items: Sequence[Item]) -> list[tuple[bytes, bytes, str | None]]:
    """(key, value, event id) per item, encoded before any clock starts."""
    from aosk.events import encode

    out: list[tuple[bytes, bytes, str | None]] = []
    for it in items:
        if isinstance(it, RawRecord):
            out.append((it.key.encode(), it.value, None))
        else:
            out.append((it.agent_id.encode(), encode(it), it.event_id))
    return out


class VerdictClock:
    """Scheduled send times by event id and, as verdicts are read, each event's latency.
    ``on_verdict`` is ``Coverage``'s callback."""

    def __init__(self) -> None:
        self.scheduled: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self._lock = threading.Lock()

    def schedule(self, event_id: str, at: float) -> None:
        with self._lock:
            self.scheduled[event_id] = at

    def on_verdict(self, t: object, now: float) -> None:
        eid = getattr(t, "event_id", None)
        if eid is None:
            return
        with self._lock:
            at = self.scheduled.get(eid)
            if at is not None and eid not in self.latency:
                self.latency[eid] = now - at

    def latencies(self, ids: Sequence[str]) -> list[float]:
        """Each event's latency, ``inf`` where no verdict was read."""
        with self._lock:
            return [self.latency.get(i, math.inf) for i in ids]

    def answered(self, ids: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for i in ids if i in self.latency)


def open_loop(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, str | None]], clock: VerdictClock,
              *, rate: float, warmup: int, drain_timeout: float, alive: Callable[[], None],
              say: Callable[..., None], on_start: Callable[[], None] = lambda: None) -> OpenLoopResult:
    """Sends ``records[:warmup]`` and waits for their verdicts, then the rest at ``rate``
    per second; waits up to ``drain_timeout`` after the last send for the remaining verdicts.
    ``on_start`` is called after the warm-up, just before the schedule starts."""
    from confluent_kafka import Producer

    from aosk.client._producer import producer_config

    producer = Producer(producer_config(bootstrap, client_id="aosk-bench-latency"))
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    def send(key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.01)

    warm, timed = records[:warmup], records[warmup:]
    warm_ids = [e for _, _, e in warm if e is not None]
    now = time.monotonic()
    for key, value, eid in warm:
        if eid is not None:
            clock.schedule(eid, now)
        send(key, value)
    producer.flush(30)
    deadline = time.monotonic() + 180
    while clock.answered(warm_ids) < len(warm_ids):
        alive()
        if time.monotonic() > deadline:
            raise AoskError(f"the worker answered {clock.answered(warm_ids)} of {len(warm_ids)} warm-up events "
                            "within 180s; see its log")
        time.sleep(0.1)

    ids = [e for _, _, e in timed if e is not None]
    on_start()
    t0 = time.monotonic() + 0.1
    last_send = t0

    def produce_all() -> None:
        nonlocal last_send
        for i, (key, value, eid) in enumerate(timed):
            at = t0 + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if eid is not None:
                clock.schedule(eid, at)
            send(key, value)
            producer.poll(0)
        last_send = time.monotonic()
        producer.flush(60)

    thread = threading.Thread(target=produce_all, name="aosk-bench-open-loop", daemon=True)
    thread.start()
    next_line = time.monotonic() + 10
    while thread.is_alive():
        thread.join(0.5)
        alive()
        if time.monotonic() >= next_line:
            next_line += 10
            say(f"    {clock.answered(ids):,} of {len(ids):,} verdicts ...", flush=True)
    if failed:
        raise AoskError(f"the broker refused a record of the latency run: {failed[0]}")
    end = time.monotonic()
    while clock.answered(ids) < len(ids) and time.monotonic() - end < drain_timeout:
        alive()
        if time.monotonic() >= next_line:
            next_line += 10
            say(f"    {clock.answered(ids):,} of {len(ids):,} verdicts (draining) ...", flush=True)
        time.sleep(0.1)
    waited = time.monotonic() - end
    return OpenLoopResult(offered=rate, sent=len(timed), send_seconds=last_send - t0,
                          latencies=clock.latencies(ids), waited=waited)
