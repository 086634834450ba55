"""The metrics AOSK processes keep (prometheus-client); serving them over HTTP comes later.

Definitions live in ``KernelMetrics``, built against a registry. ``METRICS`` is the
instance on prometheus-client's default registry, built once when this module is first
imported (Python imports a module once per process, so its metrics are registered once;
building a second ``KernelMetrics`` on the same registry would raise "Duplicated
timeseries"). That default registry is the one piece of process-wide mutable state here,
on purpose: it is what an exporter serves, and what the client library's own process
and platform collectors register into. Tests build their own ``KernelMetrics`` on a fresh
``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

__all__ = ["KernelMetrics", "METRICS"]


class KernelMetrics:
    """Every AOSK metric, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.dependency_unavailable = Counter(
            "aosk_dependency_unavailable",
            "Outages of a dependency seen by this process: counted once when it becomes "
            "unreachable (however many retries fail meanwhile).",
            ["dependency", "role"],
            registry=registry,
        )
        """Labels: ``dependency`` ``kafka`` or ``postgres``; ``role`` the process's
        (``worker``, ``projector``, ``client``)."""

    def outage_counter(self, dependency: str, role: str) -> Counter:
        """The child counter of one dependency seen by one role (``.inc()`` per outage)."""
        return self.dependency_unavailable.labels(dependency=dependency, role=role)


METRICS = KernelMetrics(REGISTRY)
