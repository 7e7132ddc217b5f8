"""Prometheus metrics, in a registry of the app's own so tests and restarts start clean."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kubetrain_serving_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kubetrain_serving_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kubetrain_serving_batch_size",
            "Rows per model call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kubetrain_serving_requests_in_flight",
            "Requests being handled now (a scrape counts itself).",
            registry=self.registry,
        )
        self.ready = Gauge(
            "kubetrain_serving_ready",
            "1 while the model is loaded, warmed up and the server is not draining.",
            registry=self.registry,
        )
        self.model = Info(
            "kubetrain_serving_model",
            "The loaded model: name, version and its recorded selection metric.",
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self.batch_size.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
