"""Prometheus metrics of one server (its own CollectorRegistry, so several apps in a process,
as in the tests, do not share counters). The scheduler reports steps and finished requests
(its Observer); the HTTP layer counts requests by endpoint and status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from ..scheduler import Finish, Scheduler

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_SEQS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._scheduler: Scheduler | None = None
        self.requests = Counter(
            "metallic_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "metallic_prompt_tokens", "prompt tokens of finished requests", registry=r
        )
        self.cached_tokens = Counter(
            "metallic_prompt_cached_tokens",
            "prompt tokens reused from a slot's cache (prefix-cache hits), not run again",
            registry=r,
        )
        self.completion_tokens = Counter(
            "metallic_completion_tokens", "tokens generated", registry=r
        )
        self.finished = Counter(
            "metallic_generations", "finished generations by reason", ["reason"], registry=r
        )
        self.ttft = Histogram(
            "metallic_time_to_first_token_seconds",
            "from the request's submission to its first token",
            buckets=_LATENCY,
            registry=r,
        )
        self.token_latency = Histogram(
            "metallic_time_per_output_token_seconds",
            "time between consecutive tokens of a request",
            buckets=_TOKEN_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "metallic_queue_seconds",
            "time a request waited for a slot",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_seqs = Histogram(
            "metallic_batch_sequences",
            "sequences per step (batch size)",
            buckets=_SEQS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "metallic_batch_tokens",
            "tokens per step (decodes + prompt chunks)",
            buckets=_TOKENS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "metallic_step_seconds",
            "time of one step (forward pass)",
            buckets=_LATENCY,
            registry=r,
        )
        Gauge("metallic_queue_depth", "requests waiting for a slot", registry=r).set_function(
            lambda: self._scheduler.queue_depth if self._scheduler else 0
        )
        Gauge("metallic_slots_in_use", "slots running a request", registry=r).set_function(
            lambda: self._scheduler.slots_in_use if self._scheduler else 0
        )
        Gauge("metallic_slots", "slots (sequences served at once)", registry=r).set_function(
            lambda: self._scheduler.n_slots if self._scheduler else 0
        )

    def bind(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    # The scheduler's Observer (called on its thread; prometheus_client is thread-safe).
    def on_step(self, n_tokens: int, n_seqs: int, seconds: float) -> None:
        self.batch_seqs.observe(n_seqs)
        self.batch_tokens.observe(n_tokens)
        self.step_seconds.observe(seconds)

    def on_finish(self, finish: Finish) -> None:
        s = finish.stats
        self.finished.labels(finish.reason).inc()
        if s.admitted:
            self.prompt_tokens.inc(s.prompt_tokens)
            self.cached_tokens.inc(s.cached_tokens)
            self.queue_time.observe(s.queue_seconds)
        self.completion_tokens.inc(s.completion_tokens)
        if s.first_token:
            self.ttft.observe(s.time_to_first_token)
        for dt in s.inter_token_seconds():
            self.token_latency.observe(dt)

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
