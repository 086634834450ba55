"""KernelClient: the SDK for trusted in-cluster services.

It spawns agents and emits their events onto the journal, keyed by agent id. Untrusted
callers go through the HTTP API instead (which authenticates the tenant); this client
can write any tenant's events, so only services inside the trust boundary get it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from aosk.client._producer import DeliveringProducer, Delivery, DeliveryFuture, producer_config
from aosk.client.verdicts import VerdictWatcher
from aosk.config import KafkaSettings, Settings
from aosk.errors import AoskError, EventRejected
from aosk.events import AgentSpawned, Budgets, Event, ForkRequested, TaskCancelled, TaskSubmitted, Transition, encode

E = TypeVar("E", bound=Event)

_HEADER_FIELDS = frozenset(f.name for f in dataclasses.fields(Event))


@dataclass(frozen=True)
class PendingEvent:
    """An event handed to the producer; ``result()`` waits for the broker's acknowledgement."""

    event: Event
    future: DeliveryFuture

    @property
    def event_id(self) -> str:
        return self.event.event_id

    def result(self, timeout: float | None = 30.0) -> Delivery:
        return self.future.result(timeout)

    async def delivered(self, timeout: float = 30.0) -> Delivery:
        """``result`` for asyncio code (no thread held while waiting)."""
        return await self.future.delivered(timeout)


class KernelClient:
    """Produces journal events with an idempotent producer (acks=all, murmur2 keys).

    Use as a context manager: leaving it flushes and waits for every acknowledgement.
    """

    def __init__(self, *, bootstrap: str, kafka: KafkaSettings, client_id: str = "aosk-sdk",
                 producer_overrides: Mapping[str, Any] | None = None, watch_verdicts: bool = False) -> None:
        self._topic = kafka.journal_topic
        self._max_bytes = kafka.max_event_bytes
        self._bootstrap, self._kafka = bootstrap, kafka
        self._verdicts_lock = threading.Lock()
        # The watcher is positioned before anything is produced, so no verdict is missed.
        self._verdicts = VerdictWatcher(bootstrap=bootstrap, kafka=kafka) if watch_verdicts else None
        try:
            self._producer = DeliveringProducer(
                producer_config(bootstrap, client_id=client_id, **dict(producer_overrides or {}))
            )
        except BaseException:
            if self._verdicts is not None:
                self._verdicts.close()
            raise

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KernelClient:
        from aosk.endpoints import resolve_endpoints

        return cls(bootstrap=resolve_endpoints(settings).bootstrap, kafka=settings.kafka, **kwargs)

    # -- building events -----------------------------------------------------------

    @staticmethod
    def new_event(event_type: type[E], *, agent_id: str, tenant_id: str, event_id: str | None = None,
                  correlation_id: str | None = None, causation_id: str | None = None,
                  **payload: Any) -> E:
        """An event of ``event_type`` with a fresh id, the current time and client origin."""
        try:
            return event_type(
                event_id=event_id or str(uuid.uuid4()),
                agent_id=agent_id,
                tenant_id=tenant_id,
                occurred_at=time.time_ns() // 1000,
                origin="client",
                correlation_id=correlation_id,
                causation_id=causation_id,
                **payload,
            )
        except TypeError as e:
            names = [f.name for f in dataclasses.fields(event_type) if f.name not in _HEADER_FIELDS]
            raise EventRejected(f"{event_type.__name__}: {e}; its payload fields are {names}") from e

    # -- producing -----------------------------------------------------------------

    def send(self, event: Event) -> PendingEvent:
        """Validate, encode and produce one event on its agent's key."""
        value = encode(event)  # EventRejected naming the field that does not fit
        if len(value) > self._max_bytes:
            raise EventRejected(
                f"{type(event).__name__} {event.event_id} encodes to {len(value)} bytes, over the "
                f"limit of {self._max_bytes} (kafka.max_event_bytes); store large content elsewhere "
                "and reference it"
            )
        future = self._producer.produce(self._topic, key=event.agent_id.encode(), value=value)
        return PendingEvent(event, future)

    def emit(self, event_type: type[E], *, agent_id: str, tenant_id: str, **fields: Any) -> PendingEvent:
        """Build an event (see :meth:`new_event`) and send it."""
        return self.send(self.new_event(event_type, agent_id=agent_id, tenant_id=tenant_id, **fields))

    def spawn(self, *, agent_id: str, tenant_id: str, name: str, budgets: Budgets,
              capabilities: Sequence[str] = (), priority: int = 50,
              metadata: Mapping[str, str] | None = None, event_id: str | None = None) -> PendingEvent:
        """Create a root agent (READY). Children are spawned through SpawnRequested."""
        if not 0 <= priority <= 100:
            raise EventRejected(f"AgentSpawned {agent_id}: priority {priority} is outside 0-100")
        return self.emit(
            AgentSpawned, agent_id=agent_id, tenant_id=tenant_id, event_id=event_id, parent_id=None,
            name=name, priority=priority, capabilities=tuple(capabilities), budgets=budgets,
            metadata=dict(metadata or {}),
        )

    def submit_task(self, agent_id: str, text: str, *, tenant_id: str, task_id: str | None = None,
                    metadata: Mapping[str, str] | None = None, event_id: str | None = None) -> PendingEvent:
        """Give ``agent_id`` a task (``TaskSubmitted``): queued behind its other tasks, run
        by ``aosk runtime`` in submission order. ``task_id`` defaults to a new UUID; the
        event's ``task_id`` is the one sent. The fold rejects an id the agent already holds
        or ended recently (``task_id_in_use``) and a ninth queued task (``task_queue_full``)."""
        return self.emit(TaskSubmitted, agent_id=agent_id, tenant_id=tenant_id, event_id=event_id,
                         task_id=task_id or str(uuid.uuid4()), input=text, metadata=dict(metadata or {}))

    def cancel_task(self, agent_id: str, task_id: str, reason: str = "", *, tenant_id: str,
                    event_id: str | None = None) -> PendingEvent:
        """Cancel a queued or running task of ``agent_id`` (``TaskCancelled``); a task that
        already ended is rejected ``task_ended`` (the journal's order decides a race with
        its completion)."""
        return self.emit(TaskCancelled, agent_id=agent_id, tenant_id=tenant_id, event_id=event_id,
                         task_id=task_id, reason=reason)

    # -- verdicts ------------------------------------------------------------------

    def fork(self, agent_id: str, *, tenant_id: str, at_seq: int, new_agent_id: str | None = None,
             event_id: str | None = None) -> PendingEvent:
        """Ask the kernel to fork ``agent_id`` as it was after its ``at_seq``-th record into a
        new agent (``new_agent_id``, default a fresh id). A worker computes that past state
        (checkpoint + journal) and writes ``AgentForked`` carrying it on the new key."""
        if at_seq < 1:
            raise EventRejected(f"ForkRequested {agent_id}: at_seq must be >= 1, not {at_seq}")
        return self.emit(ForkRequested, agent_id=agent_id, tenant_id=tenant_id, event_id=event_id,
                         new_agent_id=new_agent_id or f"{agent_id}-fork-{uuid.uuid4().hex[:8]}", at_seq=at_seq)

    @property
    def watching_verdicts(self) -> bool:
        return self._verdicts is not None

    def watch_verdicts(self) -> None:
        """Start watching verdicts now, if not yet (``watch_verdicts=True`` starts at
        creation): verdicts on events produced after this call are seen by
        ``wait_for_verdict``. A process that only sometimes waits (an API) calls this just
        before producing the first event it will wait for, and reads no verdicts till then."""
        with self._verdicts_lock:
            if self._verdicts is None:
                self._verdicts = VerdictWatcher(bootstrap=self._bootstrap, kafka=self._kafka)

    def wait_for_verdict(self, event_id: str, timeout: float = 30.0) -> Transition:
        """The kernel's verdict on ``event_id`` (accepted / rejected / duplicate, with the
        reason, new status, seq and state hash); TimeoutError if none within ``timeout``.

        Needs ``watch_verdicts=True``: the client then reads verdicts from its creation on,
        so a verdict that comes before this call is not missed (see ``VerdictWatcher``)."""
        if self._verdicts is None:
            raise AoskError("this KernelClient does not watch verdicts; create it with watch_verdicts=True "
                            "or call watch_verdicts() (before producing the events whose verdicts you want)")
        return self._verdicts.wait(event_id, timeout)

    def send_and_wait(self, event: Event, timeout: float = 30.0) -> Transition:
        """Send ``event`` and wait for its verdict (needs ``watch_verdicts=True``)."""
        if self._verdicts is None:
            raise AoskError("send_and_wait needs a KernelClient created with watch_verdicts=True")
        deadline = time.monotonic() + timeout
        self.send(event).result(timeout)
        return self._verdicts.wait(event.event_id, max(0.0, deadline - time.monotonic()))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every acknowledgement; returns how many are still outstanding."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        try:
            self._producer.close(timeout)
        finally:
            if self._verdicts is not None:
                self._verdicts.close()

    def __enter__(self) -> KernelClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
