"""Prometheus metrics of one app, in a registry of its own (several apps in one process do not clash).

=================================== ======= ====================================================================
name                                type    meaning
=================================== ======= ====================================================================
``bge_icl_requests_total``          counter HTTP requests to ``/v1/`` routes, by ``route``, ``code`` and ``model`` id
``bge_icl_request_duration_seconds`` histogram time from request to response, by ``route`` and ``model`` id
``bge_icl_inputs_total``            counter texts of answered ``/v1/embeddings`` requests, by ``model`` id
``bge_icl_rows_total``              counter texts embedded by the model
``bge_icl_forward_passes_total``    counter forward passes run (rows per pass = the batch size)
``bge_icl_queue_rows``              gauge   texts of requests in flight (waiting or running)
``bge_icl_prefix_hits_total``       counter queries that ran on a cached few-shot prefix
``bge_icl_ready``                   gauge   1 once the model is loaded and the prefixes built
=================================== ======= ====================================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from bge_icl_server.service import EmbeddingService

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _StatsCollector:
    """Reads the embedders' counters at scrape time (they count rows and passes; the server does not)."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats()
        yield CounterMetricFamily("bge_icl_rows", "Texts embedded by the model.", value=sum(stats.replica_rows))
        yield CounterMetricFamily("bge_icl_forward_passes", "Forward passes run (rows per pass is the batch size).",
                                  value=stats.forward_passes)  # fmt: skip
        yield CounterMetricFamily("bge_icl_prefix_hits", "Queries that ran on a cached few-shot prefix.",
                                  value=stats.prefix_hits)  # fmt: skip


class Metrics:
    """The metrics of one app.

    Args:
        service: The service whose counters are read at scrape time.
    """

    def __init__(self, service: EmbeddingService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bge_icl_requests", "HTTP requests to /v1/ routes, by route, status code and model id.",
                                ["route", "code", "model"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("bge_icl_request_duration_seconds", "Time from request to response, by route and "
                                 "model id.", ["route", "model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.inputs = Counter("bge_icl_inputs", "Texts of answered /v1/embeddings requests, by model id.", ["model"],
                              registry=self.registry)  # fmt: skip
        queue = Gauge("bge_icl_queue_rows", "Texts of requests in flight (waiting or running).",
                      registry=self.registry)  # fmt: skip
        queue.set_function(lambda: service.queued_rows)
        ready = Gauge("bge_icl_ready", "1 once the model is loaded and the prefixes built.", registry=self.registry)
        ready.set_function(lambda: 1.0 if service.state == "ready" else 0.0)
        self.registry.register(_StatsCollector(service))

    def observe(self, route: str, code: int, seconds: float, model: str = "-", inputs: int = 0) -> None:
        """Count one finished request: its route, status, time, and (an answered embeddings request) its texts;
        ``model`` is a served id ("-" when the request named none that is served)."""
        self.requests.labels(route=route, code=str(code), model=model).inc()
        self.latency.labels(route=route, model=model).observe(seconds)
        if code == 200 and route == "/v1/embeddings":
            self.inputs.labels(model=model).inc(inputs)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
