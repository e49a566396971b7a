"""Prometheus metrics of the service (text format at ``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class ServiceMetrics:
    """The service's metrics in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunetrace_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tunetrace_http_request_duration_seconds",
            "HTTP request duration by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.match_outcomes = Counter(
            "tunetrace_match_outcomes_total",
            "Match requests by outcome: copy_found, no_copy or rejected (bad input).",
            ["outcome"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "tunetrace_upload_bytes_total", "Bytes of audio received.", registry=self.registry
        )
        self.catalogue_references = Gauge(
            "tunetrace_catalogue_references",
            "References in the catalogue.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tunetrace_queue_depth",
            "Requests waiting for a worker process.",
            registry=self.registry,
        )
        self.admitted = Gauge(
            "tunetrace_admitted_requests",
            "Requests holding an admission slot (receiving an upload, queued or processed).",
            registry=self.registry,
        )
        self.busy = Gauge(
            "tunetrace_busy_requests",
            "Requests being processed by, or waiting for, a worker process.",
            registry=self.registry,
        )

    def watch(
        self,
        *,
        references: Callable[[], float],
        queue_depth: Callable[[], float],
        busy: Callable[[], float],
        admitted: Callable[[], float] = lambda: 0,
    ) -> None:
        """Read the gauges from callables at scrape time."""
        self.catalogue_references.set_function(references)
        self.queue_depth.set_function(queue_depth)
        self.busy.set_function(busy)
        self.admitted.set_function(admitted)
