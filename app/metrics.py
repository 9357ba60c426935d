"""Prometheus metrics: exactly the `ubs_embed_*` names the dashboard and alerts use.

Each app owns its registry (several apps can live in one test process). One
uvicorn worker per replica, so prometheus_client's multiprocess mode is not needed.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "ubs_embed_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EVENT_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "End-to-end request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "Time a sequence waited in the batch queue.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.preprocess = Histogram(
            PREFIX + "preprocess_seconds",
            "Time to encode one request's raw events.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference = Histogram(
            PREFIX + "inference_seconds", "Model time for one batch.", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.sequences_per_request = Histogram(
            PREFIX + "sequences_per_request", "Sequences in one /embed request.", buckets=COUNT_BUCKETS, registry=r
        )
        self.events_per_sequence = Histogram(
            PREFIX + "events_per_sequence", "Raw events in one sequence.", buckets=EVENT_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size", "Sequences in one inference batch.", buckets=COUNT_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Sequences waiting in the batch queue.", registry=r)
        self.cache_hits = Counter(PREFIX + "cache_hits", "Sequences answered from the cache.", registry=r)
        self.cache_misses = Counter(PREFIX + "cache_misses", "Sequences not found in the cache.", registry=r)
        self.cache_errors = Counter(
            PREFIX + "cache_errors", "Cache operations that failed (served without the cache).", registry=r
        )
        self.failures = Counter(PREFIX + "failures", "Failed requests by reason.", ["reason"], registry=r)
        self.model_info = Gauge(
            PREFIX + "model_info",
            "The model being served and the onnxruntime provider really in use (value 1).",
            ["model_version", "provider", "requested_provider"],
            registry=r,
        )

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def set_model(self, model_version: str, provider: str, requested_provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_version, provider, requested_provider).set(1)

    def count_failure(self, reason: str) -> None:
        self.failures.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
