"""The API's Prometheus metrics: requests by route template and status, latency, requests
in flight, SSE clients and produce latency, counted across every uvicorn worker.

``aosk api --metrics-port P`` (``api.metrics_port``) turns them on. The supervising
``aosk api`` process makes a fresh directory for prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) before any worker starts and serves ``/metrics`` from it on
port P (``serve_multiprocess``), never on the public port; each worker writes its values
there (``ApiMetrics`` on a registry of its own, installed by ``install``) and marks itself
dead at shutdown so its live gauges go away. Without a metrics port nothing is counted.

Routes are labelled by their template (``/api/v1/agents/{agent_id}``), never the raw
path, and requests no route matched by ``unmatched``: the label set stays bounded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics", "install", "produce_timer", "count_rate_limit_fallback", "sse_client", "multiprocess_dir",
           "serve_multiprocess"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Every API metric, registered in ``registry`` (values in the multiprocess directory
    when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("aosk_api_requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("aosk_api_request_seconds",
                                 "Time from receiving a request to the end of its response body, by route template.",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("aosk_api_requests_in_flight", "Requests being handled now.",
                               registry=registry, multiprocess_mode="livesum")
        self.sse_clients = Gauge("aosk_api_sse_clients", "Server-Sent Events clients connected now.",
                                 registry=registry, multiprocess_mode="livesum")
        self.produce = Histogram("aosk_api_produce_seconds",
                                 "Time from handing a record to the producer to the broker's acknowledgement, "
                                 "by operation (spawn, event, kill, ...).",
                                 ["operation"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.rate_limit_fallbacks = Counter(
            "aosk_api_rate_limit_fallbacks",
            "Requests whose rate limit this API process checked in its own buckets because Redis "
            "(cache.backend redis) did not answer.", registry=registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        status = 500
        start = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            m.requests.labels(route=template, method=method, status=str(status)).inc()
            m.latency.labels(route=template, method=method).observe(time.perf_counter() - start)


def install(app: Any) -> ApiMetrics:
    """Count ``app``'s requests (middleware) and keep the metrics in ``app.state.metrics``."""
    metrics = ApiMetrics(CollectorRegistry())
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    return metrics


def mark_dead() -> None:
    """This worker is going away: drop its live gauges' values (a no-op outside multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def _metrics(request: Any) -> ApiMetrics | None:
    return getattr(request.app.state, "metrics", None)


def count_rate_limit_fallback(request: Any) -> None:
    """One request's rate limit checked in this process because Redis did not answer."""
    m = _metrics(request)
    if m is not None:
        m.rate_limit_fallbacks.inc()


@contextmanager
def produce_timer(request: Any, operation: str) -> Iterator[None]:
    """Time the block (a produce and its acknowledgement) as ``operation``'s produce latency."""
    m = _metrics(request)
    if m is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        m.produce.labels(operation=operation).observe(time.perf_counter() - start)


@contextmanager
def sse_client(request: Any) -> Iterator[None]:
    """Count one connected SSE client for the duration of the block (the stream's body)."""
    m = _metrics(request)
    if m is None:
        yield
        return
    m.sse_clients.inc()
    try:
        yield
    finally:
        m.sse_clients.dec()


@contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh, empty directory for prometheus-client's multiprocess mode, exported as
    ``PROMETHEUS_MULTIPROC_DIR`` for this process and the workers it starts; removed on exit."""
    from prometheus_client import values

    path = tempfile.mkdtemp(prefix="aosk-api-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    # prometheus-client picks its value class when first imported; the CLI has imported it
    # already, and with one worker uvicorn serves the app in this very process.
    values.ValueClass = values.get_value_class()
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        values.ValueClass = values.get_value_class()
        shutil.rmtree(path, ignore_errors=True)


def serve_multiprocess(path: str, port: int, addr: str) -> None:
    """Serve every worker's values in ``path`` at ``http://addr:port/metrics`` (a daemon thread)."""
    from prometheus_client import start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    start_http_server(port, addr=addr, registry=registry)
