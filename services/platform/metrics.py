"""Prometheus metrics (SPEC §9), correct with several uvicorn workers.

With `PROMETHEUS_MULTIPROC_DIR` set (`main.py api` sets it), prometheus-client keeps every
process's values in memory-mapped files there and `/metrics` merges them: counters and
histograms add up across workers, gauges use the mode noted on each. Without it (tests, one
process) the values live in this object's own registry. Each `Metrics` has its own registry,
so several apps in one process (the test suite) do not collide.

Labelled children are cached in dicts: `.labels()` costs more than the increment itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

T = TypeVar("T")
BREAKER_STATE_VALUE = {"closed": 0, "half-open": 1, "open": 2}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def multiprocess_dir() -> str | None:
    """The shared directory when running under several workers, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class LedgerLevels(Protocol):
    """What the metrics read of the ledger (services/ledger/wal.py)."""

    @property
    def pending(self) -> int: ...
    @property
    def wal_size_bytes(self) -> int: ...
    @property
    def unlogged(self) -> int: ...
    @property
    def dropped(self) -> int: ...


class Metrics:
    """Every metric the gateway exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.buffer_len = Gauge(
            "llm_buffer_len",
            "Ledger records waiting for the database.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.wal_size = Gauge(
            "llm_wal_size_bytes",
            "Bytes in write-ahead logs not yet committed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_unlogged = Gauge(
            "llm_ledger_unlogged_records",
            "Ledger records held only in memory: their WAL write failed (full disk, I/O error).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_dropped = Counter(
            "llm_ledger_dropped_records",
            "Ledger records lost: answered unrecorded while full (ledger.when_full: answer), or "
            "left in memory only at exit.",
            registry=r,
        )
        self._dropped_seen = 0
        self.attempts = Counter(
            "llm_attempts", "Upstream attempts.", ["deployment", "model", "outcome"], registry=r
        )
        self.breaker_state = Gauge(
            "circuit_breaker_state",
            "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["name"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_requests = Counter(
            "circuit_breaker_requests", "Calls through a breaker.", ["name"], registry=r
        )
        self.breaker_failures = Counter(
            "circuit_breaker_failures", "Calls a breaker counted as failed.", ["name"], registry=r
        )
        self.tier_usage = Counter(
            "fallback_chain_tier_usage", "Requests by the tier that answered.", ["tier"], registry=r
        )
        self.latency = Histogram(
            "llm_request_duration_seconds",
            "Gateway request duration.",
            ["model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Streaming time to first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llm_tokens", "Tokens by model and direction.", ["model", "direction"], registry=r
        )
        self.cost = Counter("llm_cost_usd", "Cost in USD by model.", ["model"], registry=r)
        self.anomalies = Counter(
            "llm_upstream_anomalies",
            "Upstream answers repaired at the boundary: chunks skipped as malformed, usage "
            "blocks dropped as untrustworthy (tokens then estimated).",
            ["deployment", "kind"],
            registry=r,
        )
        self.sessions = Counter(
            "gateway_sessions_created", "Sessions created or re-pinned.", registry=r
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._extensions: dict[str, Any] = {}

    def extension(self, name: str, build: Callable[[CollectorRegistry], T]) -> T:
        """Metrics a higher layer defines (the planner's gauges), registered in this registry
        once however often the gateway using them is opened."""
        if name not in self._extensions:
            self._extensions[name] = build(self.registry)
        return cast(T, self._extensions[name])

    def ledger_levels(self, ledger: LedgerLevels) -> None:
        """The ledger's waiting records, WAL bytes, memory-only records and losses."""
        self.buffer_len.set(ledger.pending)
        self.wal_size.set(ledger.wal_size_bytes)
        self.ledger_unlogged.set(ledger.unlogged)
        if ledger.dropped > self._dropped_seen:
            self.ledger_dropped.inc(ledger.dropped - self._dropped_seen)
            self._dropped_seen = ledger.dropped

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, model: str, tier: str, seconds: float, ttft: float | None) -> None:
        """One answered (or failed) request."""
        self._child(self.latency, model, tier).observe(seconds)
        self._child(self.tier_usage, tier).inc()
        if ttft is not None:
            self._child(self.ttft, model).observe(ttft)

    def attempt(self, deployment: str, model: str, outcome: str, counted_failure: bool) -> None:
        """One upstream attempt, and what its breaker saw."""
        self._child(self.attempts, deployment, model, outcome).inc()
        self._child(self.breaker_requests, deployment).inc()
        if counted_failure:
            self._child(self.breaker_failures, deployment).inc()

    def usage(self, model: str, tokens_in: int, tokens_out: int, cost_nanousd: int) -> None:
        """Tokens and cost of one answer (the ledger counts nano-dollars; this metric, USD)."""
        # Incremented even by zero, so that every model answering appears in the exposition.
        self._child(self.tokens, model, "input").inc(tokens_in)
        self._child(self.tokens, model, "output").inc(tokens_out)
        self._child(self.cost, model).inc(cost_nanousd / 1e9)

    def anomaly(self, deployment: str, kind: str, count: int = 1) -> None:
        """Something an upstream sent that had to be skipped or replaced."""
        self._child(self.anomalies, deployment, kind).inc(count)

    def forget_deployment(self, name: str) -> None:
        """A deployment that is gone (a stopped planner replica): its gauge leaves the
        exposition (its counters stay: they are history)."""
        self._children.pop((id(self.breaker_state), name), None)
        with contextlib.suppress(KeyError):
            self.breaker_state.remove(name)

    def breaker(self, name: str, state: str) -> None:
        """A breaker's current state, as this process sees it."""
        self._child(self.breaker_state, name).set(BREAKER_STATE_VALUE[state])

    def render(self) -> bytes:
        """The exposition text: all workers merged when multiprocess, else this registry."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
