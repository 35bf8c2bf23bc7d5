"""Prometheus metrics (``GET /metrics``), kept with ``prometheus_client``.

Each app has its own registry, so several apps in one process (tests) do not share counters. With ``--workers`` the
command points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start, and ``/metrics`` then
reports the sum over every worker (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ..trace import ContinuationTrace

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ROUND_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)


class Metrics:
    """The proxy's counters: requests, rounds per call, stop causes, upstream errors and retries, latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        registry = self.registry
        self.requests = Counter(
            "autocontinue_proxy_requests",
            "Requests answered, by route and HTTP status.",
            ["route", "status"],
            registry=registry,
        )
        self.rounds = Histogram(
            "autocontinue_proxy_rounds_per_call",
            "Upstream requests (rounds) per continued chat completion.",
            buckets=_ROUND_BUCKETS,
            registry=registry,
        )
        self.stop_causes = Counter(
            "autocontinue_proxy_stop_causes",
            "Why continued chat completions ended (natural, max_rounds, token_budget, error, ...).",
            ["stop_cause"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "autocontinue_proxy_upstream_errors",
            "Upstream failures that ended a request, by kind (an HTTP status, connection, timeout, malformed).",
            ["kind"],
            registry=registry,
        )
        self.retries = Counter(
            "autocontinue_proxy_upstream_retries",
            "Upstream requests that failed and were retried within a round.",
            registry=registry,
        )
        self.latency = Histogram(
            "autocontinue_proxy_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route and streaming.",
            ["route", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "autocontinue_proxy_in_flight",
            "Requests in flight (streams included).",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def call(self, trace: ContinuationTrace | None) -> None:
        """Count a continued call's rounds, retries and stop cause."""
        if trace is None:
            return
        self.rounds.observe(len(trace.rounds))
        self.stop_causes.labels(trace.stop_cause).inc()
        retries = sum(r.retries for r in trace.rounds)
        if retries:
            self.retries.inc(retries)

    def render(self) -> bytes:
        """The text exposition format of every metric (summed over workers in multiprocess mode)."""
        if self._multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
