"""The metrics AOSK processes keep (prometheus-client); `serve` exposes them at /metrics.

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

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

__all__ = ["KernelMetrics", "METRICS", "serve"]


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

        self.partition_stopped = Gauge(
            "aosk_partition_stopped",
            "1 for each journal partition this process holds stopped at a record it must not skip "
            "(`aosk db status` and docs/recovery.md say what to do); the series goes away when it goes on.",
            ["role", "partition", "reason"],
            registry=registry,
        )
        """Labels: ``role`` ``worker`` or ``projector``; ``partition``; ``reason`` the stop's
        code (``unknown_fingerprint``, ``unknown_fold_version``, ...). Partitions are few
        and fixed, so they make a bounded label; agent ids never do."""
        self._stops: dict[tuple[str, int], str] = {}

    def stopped(self, role: str, partition: int, reason: str) -> None:
        """``partition`` is stopped in this process (for ``reason``)."""
        self.going_on(role, partition)
        self._stops[(role, partition)] = reason
        self.partition_stopped.labels(role=role, partition=str(partition), reason=reason).set(1)

    def going_on(self, role: str, partition: int) -> None:
        """``partition`` is not stopped here any more (released, or no longer owned)."""
        reason = self._stops.pop((role, partition), None)
        if reason is not None:
            self.partition_stopped.remove(role, str(partition), reason)

    def outage_counter(self, dependency: str, role: str) -> Counter:
        """The child counter of one dependency seen by one role (``.inc()`` per outage)."""
        return self.dependency_unavailable.labels(dependency=dependency, role=role)


METRICS = KernelMetrics(REGISTRY)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve the default registry (``METRICS`` and the client library's process metrics)
    at ``http://addr:port/metrics`` from a daemon thread, for Prometheus to scrape."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr)
