"""The metrics AOSK processes keep (prometheus-client); `serve` exposes them at /metrics.

Definitions live in ``KernelMetrics``, built against a registry. ``METRICS`` is the
instance on prometheus-client's default registry, built once when this module is first
imported (Python imports a module once per process, so its metrics are registered once;
building a second ``KernelMetrics`` on the same registry would raise "Duplicated
timeseries"). That default registry is the one piece of process-wide mutable state here,
on purpose: it is what an exporter serves, and what the client library's own process
and platform collectors register into. Tests build their own ``KernelMetrics`` on a fresh
``CollectorRegistry``.

Every metric is defined in every process, but only the shared ones (dependency outages,
stopped partitions) are registered from the start; a role's own metrics are registered
by ``enable(role)`` (``serve`` does it), so a worker does not export the runtime's
metrics as zeros. The names, types and labels are the contract of docs/operations.md
("Metrics"); ``tests/ops/test_ops_metric_contract.py`` holds them to it.

Costs: the hot loops (a worker's fold, a runtime's steps) add counts to plain dicts or
call ``inc``/``observe`` once per batch or call; gauges that summarise state (agents by
status, tasks by status, the run queue) are computed when Prometheus scrapes, in the
scrape's thread, from a copy of the process's dicts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

__all__ = ["KernelMetrics", "METRICS", "ROLES", "ScrapedGauge", "serve", "health_app"]

log = logging.getLogger("aosk.metrics")

ROLES: Final = ("worker", "projector", "runtime")
"""The roles whose metrics ``enable`` registers (the API has its own, aosk.api.metrics)."""

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CALL_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_RECORDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class ScrapedGauge(Gauge):
    """A labelled gauge whose values are computed when it is collected (a scrape): the
    function given to ``source`` returns label value -> value; labels it no longer names
    are set to 0 (a status with no agent reads 0, not a stale count)."""

    def source(self, fn: Callable[[], Mapping[str, float]] | None) -> None:
        self._source = fn

    def collect(self) -> Iterable[Any]:
        fn = getattr(self, "_source", None)
        if fn is not None:
            try:
                values = fn()
            except Exception as e:  # noqa: BLE001 - a scrape must answer; the value waits for the next one
                log.debug("computing %s failed: %r", self._name, e)
            else:
                seen: set[str] = getattr(self, "_seen", set())
                for label in seen - set(values):
                    self.labels(label).set(0)
                for label, value in values.items():
                    self.labels(label).set(value)
                self._seen = seen | set(values)
        return super().collect()


class KernelMetrics:
    """Every AOSK metric of the worker, projector and runtime (the API's are
    ``aosk.api.metrics``); the shared ones registered in ``registry`` now, a role's own
    by ``enable(role)``."""

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

        # -- every consumer of the journal ---------------------------------------------
        self.consumer_lag_records = Gauge(
            "aosk_consumer_lag_records",
            "Records between the last one this process processed and the partition's end (broker's high watermark).",
            ["group", "partition"], registry=None)
        self.consumer_lag_seconds = Gauge(
            "aosk_consumer_lag_seconds",
            "How far behind the partition's end this process is in broker time: now minus the broker timestamp of "
            "the last record processed while records wait, 0 when caught up.",
            ["group", "partition"], registry=None)

        # -- worker ----------------------------------------------------------------------
        self.worker_records = Counter(
            "aosk_worker_records", "Journal records folded, by event type (undecodable: bytes that did not decode).",
            ["type"], registry=None)
        self.worker_verdicts = Counter(
            "aosk_worker_verdicts", "Verdicts written, by event type, kind (accepted, rejected, duplicate) and reason.",
            ["type", "kind", "reason"], registry=None)
        self.worker_batch_records = Histogram(
            "aosk_worker_batch_records", "Records per folded batch.", buckets=_BATCH_RECORDS, registry=None)
        self.worker_fold_seconds = Histogram(
            "aosk_worker_fold_seconds", "Folding one batch (outputs handed to the producer included).",
            buckets=_SECONDS, registry=None)
        self.worker_verdict_latency = Histogram(
            "aosk_worker_verdict_latency_seconds",
            "A record's broker timestamp to the broker's acknowledgement of its verdict (as the worker learns of it).",
            buckets=_SECONDS, registry=None)
        self.agents = ScrapedGauge(
            "aosk_agents", "Agents of the partitions this worker owns, by kernel status.", ["status"], registry=None)
        self.agents_started = Counter("aosk_agents_started", "Accepted spawns.", registry=None)
        self.agents_ended = Counter(
            "aosk_agents_ended", "Agents that reached TERMINATED or ERROR, by that status.", ["status"], registry=None)
        self.context_page_outs = Counter(
            "aosk_context_page_outs", "Context entries paged out of agents' windows.", registry=None)

        # -- projector -------------------------------------------------------------------
        self.projector_batches = Counter("aosk_projector_batches", "Batches committed.", registry=None)
        self.projector_fenced_batches = Counter(
            "aosk_projector_fenced_batches",
            "Batches refused by the offsets' compare-and-set (another projector owns the partition now).",
            registry=None)
        self.projector_rows = Counter(
            "aosk_projector_rows", "Rows written, by projection table.", ["table"], registry=None)
        self.projector_transaction_seconds = Histogram(
            "aosk_projector_transaction_seconds", "One batch's transaction, begin to commit.",
            buckets=_SECONDS, registry=None)
        self.projection_latency = Histogram(
            "aosk_projection_latency_seconds", "A record's broker timestamp to the commit of its batch.",
            buckets=_SECONDS, registry=None)

        # -- runtime ---------------------------------------------------------------------
        self.run_queue_agents = Gauge(
            "aosk_runtime_run_queue_agents", "Agents with a next step waiting for a slot.", registry=None)
        self.model_call_seconds = Histogram(
            "aosk_runtime_model_call_seconds", "One model call, the provider's retries included.",
            buckets=_CALL_SECONDS, registry=None)
        self.model_call_errors = Counter(
            "aosk_runtime_model_call_errors",
            "Model calls that failed after the provider's retries (timeout, rate_limited, server, connection, other).",
            ["error"], registry=None)
        self.tool_call_seconds = Histogram(
            "aosk_runtime_tool_call_seconds", "One tool call (in its worker process, or a kernel tool).",
            ["tool"], buckets=_CALL_SECONDS, registry=None)
        self.tool_call_errors = Counter(
            "aosk_runtime_tool_call_errors",
            "Tool calls that failed, by tool and failure kind (raised, timeout, crashed, ...; too_large: cut).",
            ["tool", "error"], registry=None)
        self.tokens = Counter(
            "aosk_runtime_tokens", "Tokens used as the model server reported them, by tenant and kind "
            "(prompt, completion).", ["tenant", "kind"], registry=None)
        self.tasks = ScrapedGauge(
            "aosk_tasks", "Tasks of the agents this runtime owns, queued or running.", ["status"], registry=None)
        self.tasks_ended = Counter(
            "aosk_tasks_ended", "Tasks ended (succeeded, failed, cancelled), as this runtime's fold saw them.",
            ["status"], registry=None)

        self._roles: dict[str, tuple[Collector, ...]] = {
            "worker": (self.consumer_lag_records, self.consumer_lag_seconds, self.worker_records,
                       self.worker_verdicts, self.worker_batch_records, self.worker_fold_seconds,
                       self.worker_verdict_latency, self.agents, self.agents_started, self.agents_ended,
                       self.context_page_outs),
            "projector": (self.consumer_lag_records, self.consumer_lag_seconds, self.projector_batches,
                          self.projector_fenced_batches, self.projector_rows, self.projector_transaction_seconds,
                          self.projection_latency),
            "runtime": (self.consumer_lag_records, self.consumer_lag_seconds, self.run_queue_agents,
                        self.model_call_seconds, self.model_call_errors, self.tool_call_seconds,
                        self.tool_call_errors, self.tokens, self.tasks, self.tasks_ended),
        }
        self._enabled: set[Collector] = set()
        self._lag_children: dict[tuple[str, int], list[Any]] = {}
        self._verdict_children: dict[tuple[str, str, str], Any] = {}
        self._record_children: dict[str, Any] = {}

    def enable(self, role: str) -> None:
        """Register ``role``'s metrics (``worker``, ``projector``, ``runtime``) in the registry."""
        for metric in self._roles[role]:
            if metric not in self._enabled:
                self.registry.register(metric)
                self._enabled.add(metric)

    # -- stopped partitions ------------------------------------------------------------------

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

    # -- consumer lag -------------------------------------------------------------------------

    def lag(self, group: str, partition: int, *, next_offset: int | None, end: int | None,
            last_timestamp_ms: int | None, now_ms: int) -> None:
        """Set ``group``'s lag on ``partition``: ``end`` the broker's end offset (cached
        watermark), ``next_offset`` the next record to process, ``last_timestamp_ms`` the
        broker time of the last record processed. Unknown ends or positions leave the
        series as they were."""
        if next_offset is None or end is None or end < 0:
            return
        key = (group, partition)
        children = self._lag_children.get(key)
        if children is None:
            children = self._lag_children[key] = [self.consumer_lag_records.labels(group, str(partition)), None]
        behind = max(0, end - next_offset)
        children[0].set(behind)
        if behind == 0:
            seconds = 0.0
        elif last_timestamp_ms is not None:
            seconds = max(0, now_ms - last_timestamp_ms) / 1000
        else:
            return  # behind, and nothing processed yet: no age to give (the series appears with one)
        if children[1] is None:
            children[1] = self.consumer_lag_seconds.labels(group, str(partition))
        children[1].set(seconds)

    def forget_lag(self, group: str, partitions: Iterable[int]) -> None:
        """``partitions`` are no longer this process's: their lag series go away."""
        for p in partitions:
            if self._lag_children.pop((group, p), None) is not None:
                for gauge in (self.consumer_lag_records, self.consumer_lag_seconds):
                    try:
                        gauge.remove(group, str(p))
                    except KeyError:
                        pass

    # -- worker -------------------------------------------------------------------------------

    def folded(self, records: Mapping[str, int], verdicts: Mapping[tuple[str, str, str], int]) -> None:
        """Add one batch's counts: records folded by type, verdicts by (type, kind, reason)."""
        rc = self._record_children
        for t, n in records.items():
            child = rc.get(t)
            if child is None:
                child = rc[t] = self.worker_records.labels(t)
            child.inc(n)
        vc = self._verdict_children
        for key, n in verdicts.items():
            child = vc.get(key)
            if child is None:
                child = vc[key] = self.worker_verdicts.labels(*key)
            child.inc(n)

    # -- projector ----------------------------------------------------------------------------

    def projected(self, rows: Mapping[str, int], timestamps_ms: Iterable[int], transaction_s: float) -> None:
        """One projector batch committed: its rows by table, its records' broker
        timestamps (for the projection latency), its transaction's duration."""
        self.projector_batches.inc()
        self.projector_transaction_seconds.observe(transaction_s)
        for table, n in rows.items():
            if n:
                self.projector_rows.labels(table).inc(n)
        now_ms = time.time() * 1000
        observe = self.projection_latency.observe
        for ts in timestamps_ms:
            observe(max(0.0, now_ms - ts) / 1000)


METRICS = KernelMetrics(REGISTRY)


# -- the metrics port -------------------------------------------------------------------------

Readiness = Callable[[], Mapping[str, Any]]
"""Returns the body of ``/api/health`` (``aosk.status.Health.to_json()``)."""


def health_app(registry: CollectorRegistry, readiness: Readiness | None, *,
               fresh_s: float = 2.0) -> Callable[..., Iterable[bytes]]:
    """The WSGI app of a metrics port: ``/metrics`` (prometheus-client's own app, with its
    content negotiation), ``/health`` (200: the process answers) and ``/api/health``
    (``readiness()``: 200 with ``healthy`` or ``degraded``, as the API's route; 503
    ``unhealthy`` when the check itself failed or none was given).

    One check runs at a time. An answer younger than ``fresh_s`` is given again, and while
    a check runs the previous answer is given at once: a probe's timeout (5 s in
    ops/k8s/) is never spent waiting behind a check whose dependencies are slow to answer."""
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)
    lock = threading.Lock()
    last: list[tuple[float, str, Mapping[str, Any]]] = []

    def ready() -> tuple[str, Mapping[str, Any]]:
        assert readiness is not None
        if last and time.monotonic() - last[0][0] < fresh_s:
            return last[0][1], last[0][2]
        if not lock.acquire(blocking=not last):
            return last[0][1], last[0][2]  # a check is under way: the previous answer
        try:
            try:
                answer: tuple[str, Mapping[str, Any]] = ("200 OK", readiness())
            except Exception as e:  # noqa: BLE001 - the probe gets an answer, the log the detail
                log.warning("readiness check failed: %r", e)
                answer = ("503 Service Unavailable", {"status": "unhealthy", "error": f"{type(e).__name__}: {e}"})
            last[:] = [(time.monotonic(), *answer)]
            return answer
        finally:
            lock.release()

    def respond(start_response: Callable[..., Any], status: str, body: Mapping[str, Any]) -> list[bytes]:
        data = json.dumps(body, sort_keys=True, default=str).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/health":
            return respond(start_response, "200 OK", {"status": "healthy"})
        if path == "/api/health":
            if readiness is None:
                return respond(start_response, "503 Service Unavailable",
                               {"status": "unhealthy", "error": "no readiness check in this process"})
            return respond(start_response, *ready())
        if path in ("/metrics", "/"):
            return metrics(environ, start_response)
        return respond(start_response, "404 Not Found", {"error": f"no {path} here: /metrics, /health, /api/health"})

    return app


def serve(port: int, addr: str = "0.0.0.0", *, role: str | None = None, readiness: Readiness | None = None,
          registry: CollectorRegistry = REGISTRY) -> Any:
    """Register ``role``'s metrics (``METRICS.enable``) and serve them with ``health_app``
    at ``http://addr:port/`` from a daemon thread; returns the server (``shutdown()``)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    if role is not None and registry is REGISTRY:
        METRICS.enable(role)
    try:
        httpd = make_server(addr, port, health_app(registry, readiness), ThreadingWSGIServer, handler_class=Quiet)
    except OSError as e:
        from aosk.errors import AoskError

        raise AoskError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e} "
                        "(another process on that port? give another --metrics-port)") from e
    threading.Thread(target=httpd.serve_forever, name="aosk-metrics", daemon=True).start()
    return httpd
