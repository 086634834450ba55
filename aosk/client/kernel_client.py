"""KernelClient: the SDK for trusted in-cluster services.

It spawns agents and emits their events onto the journal, keyed by agent id. Untrusted
callers go through the HTTP API instead (which authenticates the tenant); this client
can write any tenant's events, so only services inside the trust boundary get it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from aosk.client._producer import Delivery, DeliveringProducer, DeliveryFuture, producer_config
from aosk.config import KafkaSettings, Settings
from aosk.errors import EventRejected
from aosk.events import AgentSpawned, Budgets, Event, encode

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


class KernelClient:
    """Produces journal events with an idempotent producer (acks=all, murmur2 keys).

    Use as a context manager: leaving it flushes and waits for every acknowledgement.
    """

    def __init__(self, *, bootstrap: str, kafka: KafkaSettings, client_id: str = "aosk-sdk",
                 producer_overrides: Mapping[str, Any] | None = None) -> None:
        self._topic = kafka.journal_topic
        self._max_bytes = kafka.max_event_bytes
        self._producer = DeliveringProducer(
            producer_config(bootstrap, client_id=client_id, **dict(producer_overrides or {}))
        )

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

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every acknowledgement; returns how many are still outstanding."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._producer.close(timeout)

    def __enter__(self) -> KernelClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
