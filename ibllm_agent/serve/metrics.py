"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own so that several apps can live
in one process (tests) without sharing counters."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latencies of a CPU toy (milliseconds) up to a loaded 7B on a busy GPU (seconds).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineCollector:
    """Reads `engine.stats` at scrape time: the queue and the batch as they are now."""

    def __init__(self, stats: Callable[[], dict | None]):
        self.stats = stats

    def collect(self):
        stats = self.stats() or {"waiting": 0, "running": 0, "steps": 0}
        yield GaugeMetricFamily("ibllm_queue_depth", "Requests waiting for a place in the batch",
                                value=stats["waiting"])
        yield GaugeMetricFamily("ibllm_running_batch_size", "Requests being decoded now", value=stats["running"])
        yield CounterMetricFamily("ibllm_engine_steps", "Decoding steps run", value=stats["steps"])


class Metrics:
    """The server's counters and histograms; `render()` is the /metrics body."""

    def __init__(self, engine_stats: Callable[[], dict | None]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ibllm_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.errors = Counter("ibllm_errors", "Error answers by route and error type", ["route", "type"], registry=r)
        self.finished = Counter("ibllm_generations", "Generations ended, by finish reason", ["reason"], registry=r)
        self.ttft = Histogram("ibllm_time_to_first_token_seconds", "From the request to its first text",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("ibllm_inter_token_latency_seconds", "Between successive pieces of streamed text",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ibllm_prompt_tokens", "Prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter("ibllm_completion_tokens", "Tokens generated", registry=r)
        self.load_seconds = Gauge("ibllm_model_load_seconds", "Time taken to load the model", registry=r)
        r.register(_EngineCollector(engine_stats))
        # process_resident_memory_bytes & co. (Linux): what a memory-leak alert or a soak test watches
        ProcessCollector(registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
