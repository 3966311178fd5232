"""Prometheus metrics of one app: request counts and latencies per route and status, requests in
flight, model latency per operation, model calls queued or running, proposal cache hits, and
the batch-job queue depth (set by the job backend through `Metrics.job_queue_depth`).

Each app owns its registry, so several apps in one process (tests) do not collide. With several
uvicorn worker processes every worker exposes its own numbers.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "discoseg_http_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "discoseg_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "discoseg_http_requests_in_flight", "HTTP requests being answered", registry=r
        )
        self.model_latency = Histogram(
            "discoseg_model_duration_seconds",
            "time spent in the model per operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_calls_in_flight = Gauge(
            "discoseg_model_calls_in_flight", "model calls queued or running", registry=r
        )
        self.proposal_cache = Counter(
            "discoseg_proposal_cache", "proposal cache lookups", ["result"], registry=r
        )
        self.job_queue_depth = Gauge(
            "discoseg_job_queue_depth", "batch-job work waiting in the queue", registry=r
        )

    @contextmanager
    def time_model(self, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.model_latency.labels(operation).observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path, which would
    make one series per URL) and response status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.requests_in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            m.requests_in_flight.dec()
            labels = (scope["method"], route_label(scope), str(status))
            m.requests.labels(*labels).inc()
            m.request_latency.labels(*labels).observe(time.perf_counter() - start)


def route_label(scope: Scope) -> str:
    """The template of the route that answered, e.g. `/v1/jobs/{job_id}`; `unmatched` if none.

    An included router's route knows its path without the include prefix; the prefix is what
    the request path has in front of the route's own part.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    try:
        own_part = template.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return template
    path = scope["path"]
    return path.removesuffix(own_part) + template if path.endswith(own_part) else template
