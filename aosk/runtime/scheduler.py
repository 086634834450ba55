"""The runtime's run queue: which agent to act on next when a slot is free.

An agent is queued when it has something to do (a start, a model call, a tool run) and
popped when the runtime has a slot for it. The policy has two levels:

- **Across tenants, deficit round robin.** Tenants with queued agents take turns; a turn
  gives the tenant credit ``quantum * weight / lightest`` (``lightest`` is the smallest
  weight that can occur: 1.0, or a smaller configured one, so every turn is worth at
  least ``quantum >= 1`` pops and a pop never spins through empty turns), and each pop
  costs 1. A tenant keeps unspent fractions of its credit between turns while it stays
  queued and loses them when its queue empties. Over any period in which two tenants stay
  queued, their pops are in the ratio of their weights, whatever their backlogs: a tenant
  with 10 agents queued behind another tenant's 500 is served every other pop (equal
  weights), not after the 500. Priority never crosses tenants.
- **Within a tenant, highest effective priority first, FIFO on ties.** ``effective =
  priority + (now - enqueued_at) / aging_s``: a waiting agent gains one point per
  ``aging_s`` seconds, so nothing waits forever behind a stream of higher priorities.
  Ties go to the earlier push (an insertion counter, never a comparison of clocks).

Why the within-tenant order needs no clock at pop time: all agents of a tenant age at the
same rate, so for two agents a and b at any ``now``,
``effective(a) - effective(b) = (prio_a - t_a / aging_s) - (prio_b - t_b / aging_s)``; the
``now`` terms cancel. Ordering by the static key ``priority - enqueued_at / aging_s`` is
therefore ordering by effective priority at every instant, and a plain heap keeps it
(push and pop O(log n)). Hence :meth:`RunQueue.pop` takes no ``now``.

The effective priority is deliberately not capped at 100. With ``min(100, ...)``, agents
that reached the cap would tie and fall back to FIFO, while the static key would still
rank them by ``priority - enqueued_at / aging_s`` (a priority-100 agent queued later
ahead of a priority-0 agent that has waited long enough to reach 100): the key would be
wrong, and the order would depend on ``now`` again. Uncapped, the order is the static
key's, and the starvation bound is simple: an agent of priority ``p`` pushed at ``t`` is
popped before every agent of its tenant pushed after ``t + (100 - p) * aging_s``. Its
wait is bounded by the service of what its tenant queued before that instant, and that
service is bounded by the round robin above.

Pure: no clock, no randomness, no I/O. The caller passes ``now`` (monotonic seconds) to
:meth:`RunQueue.push`; the same calls give the same pops. Not thread-safe: the runtime
uses it from its event loop.

Re-pushing a queued agent updates its priority and keeps its enqueue time (what it has
waited still counts) and its place among equals. Updates and removals leave their old
heap entries behind (lazy deletion), dropped when they reach the top and compacted away
when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["MAX_PRIORITY", "MIN_PRIORITY", "RunQueue", "SchedulerOptions"]

MIN_PRIORITY = 0
MAX_PRIORITY = 100

# Rebuild a tenant's heap once stale entries outnumber live ones by this much.
_COMPACT_SLACK = 32


@dataclass(frozen=True)
class SchedulerOptions:
    """How a :class:`RunQueue` shares the runtime between tenants and priorities."""

    aging_s: float = 10.0
    """Seconds of waiting that add one point of effective priority. A priority-0 agent
    outranks a fresh priority-100 agent of its tenant after ``100 * aging_s`` seconds."""
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    """Share of each tenant, relative to the others; a tenant not listed weighs 1.0. Two
    tenants that both have agents queued get pops in the ratio of their weights."""
    quantum: float = 1.0
    """Pops per round robin turn of the lightest tenant (weight 1.0, or the smallest
    configured weight if lower); heavier tenants get proportionally more. At least 1.
    Larger values serve a tenant in longer runs, with the same long-run shares."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.aging_s) and self.aging_s > 0):
            raise ValueError(f"aging_s must be a positive number of seconds, not {self.aging_s!r}")
        if not (math.isfinite(self.quantum) and self.quantum >= 1):
            raise ValueError(f"quantum must be at least 1 (pops per turn), not {self.quantum!r}")
        weights = dict(self.tenant_weights)
        for tenant, weight in weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of tenant {tenant!r} must be a positive number, not {weight!r}")
        object.__setattr__(self, "tenant_weights", MappingProxyType(weights))

    def weight(self, tenant_id: str) -> float:
        """The weight of ``tenant_id`` (1.0 unless configured)."""
        return float(self.tenant_weights.get(tenant_id, 1.0))


@dataclass(slots=True)
class _Entry:
    tenant_id: str
    priority: int
    enqueued_at: float
    seq: int  # push order, for FIFO among equal keys; kept on update
    ticket: int  # identifies the entry's one live heap item


@dataclass(slots=True)
class _Tenant:
    heap: list[tuple[float, int, int, str]] = field(default_factory=list)  # (key, seq, ticket, agent id)
    live: int = 0
    deficit: float = 0.0


class RunQueue:
    """Agents waiting for a runtime slot, popped by tenant fair share, then priority with aging.

    ``push`` adds or updates, ``pop`` takes the next agent, ``remove`` withdraws one;
    ``len(q)``, ``agent_id in q`` and :meth:`snapshot` (queued agents per tenant) are for
    the runtime and its metrics. See the module docstring for the policy.
    """

    def __init__(self, options: SchedulerOptions | None = None) -> None:
        self._options = options or SchedulerOptions()
        lightest = min([1.0, *self._options.tenant_weights.values()])
        self._credit_per_weight = self._options.quantum / lightest
        self._entries: dict[str, _Entry] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._turns: deque[str] = deque()  # tenants with queued agents, the one whose turn it is first
        self._turn_open = False  # whether the first tenant of _turns has received this turn's credit
        self._seq = 0
        self._ticket = 0

    @property
    def options(self) -> SchedulerOptions:
        return self._options

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._entries

    def push(self, agent_id: str, *, tenant_id: str, priority: int, now: float) -> None:
        """Queue ``agent_id``, or set the priority of an agent already queued (it keeps
        its enqueue time and its place among equals; ``now`` is then unused).

        ``priority`` is an integer from 0 to 100 (higher first); ``now`` is monotonic
        seconds, never earlier than the ``now`` of an earlier push. An agent belongs to
        one tenant: re-pushing it under another is a ``ValueError``.
        """
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                MIN_PRIORITY <= priority <= MAX_PRIORITY):
            raise ValueError(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
        entry = self._entries.get(agent_id)
        if entry is not None:
            if entry.tenant_id != tenant_id:
                raise ValueError(f"agent {agent_id!r} is queued for tenant {entry.tenant_id!r}, not {tenant_id!r}; "
                                 "remove it first to queue it for another tenant")
            if entry.priority != priority:
                entry.priority = priority
                queued = self._tenants[tenant_id]
                self._file(queued, agent_id, entry)
                self._compact_if_stale(queued)
            return
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, not {now!r}")
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant()
            self._turns.append(tenant_id)
        entry = _Entry(tenant_id, priority, float(now), self._seq, 0)
        self._seq += 1
        self._entries[agent_id] = entry
        tenant.live += 1
        self._file(tenant, agent_id, entry)

    def pop(self) -> str | None:
        """The next agent to act on, removed from the queue; ``None`` when it is empty."""
        while self._turns:
            tenant_id = self._turns[0]
            tenant = self._tenants[tenant_id]
            if not self._turn_open:
                tenant.deficit += self._credit_per_weight * self._options.weight(tenant_id)
                self._turn_open = True
            if tenant.deficit < 1:
                self._turns.rotate(-1)
                self._turn_open = False
                continue
            tenant.deficit -= 1
            agent_id = self._pop_live(tenant)
            self._drop(agent_id)
            return agent_id
        return None

    def remove(self, agent_id: str) -> bool:
        """Withdraw ``agent_id``; ``False`` if it was not queued."""
        if agent_id not in self._entries:
            return False
        self._drop(agent_id)
        return True

    def effective_priority(self, agent_id: str, *, now: float) -> float:
        """``priority + (now - enqueued_at) / aging_s`` of a queued agent (``KeyError`` if
        it is not queued); may exceed 100."""
        entry = self._entries[agent_id]
        return entry.priority + (now - entry.enqueued_at) / self._options.aging_s

    def snapshot(self) -> dict[str, int]:
        """Queued agents per tenant (tenants with none are absent), for metrics."""
        return {tenant_id: tenant.live for tenant_id, tenant in self._tenants.items()}

    def _file(self, tenant: _Tenant, agent_id: str, entry: _Entry) -> None:
        # Min-heap on -(effective priority) up to a term common to the tenant (module docstring).
        self._ticket += 1
        entry.ticket = self._ticket
        key = entry.enqueued_at / self._options.aging_s - entry.priority
        heapq.heappush(tenant.heap, (key, entry.seq, entry.ticket, agent_id))

    def _is_live(self, item: tuple[float, int, int, str]) -> bool:
        entry = self._entries.get(item[3])
        return entry is not None and entry.ticket == item[2]

    def _pop_live(self, tenant: _Tenant) -> str:
        while True:  # a tenant in _turns has at least one live item
            item = heapq.heappop(tenant.heap)
            if self._is_live(item):
                return item[3]

    def _drop(self, agent_id: str) -> None:
        """Forget a queued agent; its tenant leaves the round robin when it has none left."""
        entry = self._entries.pop(agent_id)
        tenant = self._tenants[entry.tenant_id]
        tenant.live -= 1
        if tenant.live == 0:
            del self._tenants[entry.tenant_id]  # its stale heap items and unspent credit go with it
            if self._turns[0] == entry.tenant_id:
                self._turns.popleft()
                self._turn_open = False
            else:
                self._turns.remove(entry.tenant_id)
        else:
            self._compact_if_stale(tenant)

    def _compact_if_stale(self, tenant: _Tenant) -> None:
        if len(tenant.heap) > 2 * tenant.live + _COMPACT_SLACK:
            tenant.heap = [item for item in tenant.heap if self._is_live(item)]
            heapq.heapify(tenant.heap)
