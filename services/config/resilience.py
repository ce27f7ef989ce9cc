"""The resilience settings: breakers, retries and hedging per chain, the retry budget, health
checks, the response cache, fallback jitter, deadlines and stream continuation."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, model_validator

from services.config.base import Section


class BreakerSettings(Section):
    """A deployment's circuit breaker (see services/resilience/breaker.py for the state machine)."""

    # Opens when, over the last `window_seconds`, at least `minimum_calls` calls were made and
    # `failure_rate` of them failed, or after `consecutive_failures` failures in a row.
    window_seconds: float = Field(30.0, gt=0)
    buckets: int = Field(10, ge=1, le=60)
    minimum_calls: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, ge=1)
    # The open wait doubles on each trip that follows a failed recovery, up to the cap, +/- jitter.
    # The cap is what bounds how long a recovered deployment stays unused: with 20 s (+20 %
    # jitter) a half-open probe reaches it at most 24 s after it recovered, while probes stay
    # at two per 20 s per deployment however long the outage.
    open_seconds: float = Field(5.0, gt=0)
    max_open_seconds: float = Field(20.0, gt=0)
    open_jitter: float = Field(0.2, ge=0, lt=1)
    # Half-open admits this many concurrent probes; this many successes close the breaker.
    half_open_probes: int = Field(2, ge=1)
    # A probe that never reports back (its process died) frees its permit after this long.
    probe_timeout_seconds: float = Field(30.0, gt=0)
    # A call slower than this (time to first token when streaming) counts as a failure.
    slow_call_seconds: float | None = Field(None, gt=0)


class RetrySettings(Section):
    """Retries of the same deployment after a retryable failure (connect, 408, 429, 5xx), with
    full-jitter backoff, before the walk fails over; a chain may carry its own (seed 001)."""

    max_retries: int = Field(2, ge=0, le=10)
    base_delay_seconds: float = Field(0.5, gt=0)
    max_delay_seconds: float = Field(5.0, gt=0)
    # A Retry-After longer than this is not waited for: the walk fails over at once.
    max_retry_after_seconds: float = Field(5.0, ge=0)


class HedgeSettings(Section):
    """Hedged requests (opt-in per chain): when the first deployment tried has produced no
    first token after a delay, the same request starts on the next usable deployment; the first
    to produce a token wins and the other is cancelled. Each hedge spends a retry-budget token."""

    enabled: bool = False
    # The delay: fixed, or (`adaptive`) the deployment's own recent time-to-first-token p95,
    # never below `after_seconds` and never above `max_after_seconds`.
    after_seconds: float = Field(0.5, gt=0)
    adaptive: bool = False
    max_after_seconds: float = Field(5.0, gt=0)


class Chain(Section):
    """A named fallback chain: its steps, and optionally its own retry policy and hedging.

    Written as a plain list (`default: [a, b, cache, degraded]`) or a mapping
    (`default: {steps: [...], retry: {max_retries: 3, base_delay_seconds: 1}}`)."""

    steps: list[str] = Field(min_length=1)
    retry: RetrySettings | None = None
    hedge: HedgeSettings = HedgeSettings()

    @model_validator(mode="before")
    @classmethod
    def _steps_only(cls, data: Any) -> Any:
        return {"steps": data} if isinstance(data, list) else data


class BudgetSettings(Section):
    """The retry budget: retries and fallbacks as a share of recent requests (a token bucket)."""

    ratio: float = Field(0.2, ge=0, le=10)
    # A floor so that a quiet gateway can still retry: this many per second of the window.
    min_per_second: float = Field(10.0, ge=0)
    window_seconds: float = Field(10.0, gt=0, le=600)


class HealthSettings(Section):
    """The health monitor's active probes and passive window."""

    enabled: bool = True
    probe_interval_seconds: float = Field(15.0, gt=0)
    probe_timeout_seconds: float = Field(5.0, gt=0)
    # This many failed probes in a row mark a deployment unhealthy (skipped); one success heals.
    unhealthy_after: int = Field(2, ge=1)
    window: int = Field(100, ge=1, le=100_000)


class CacheSettings(Section):
    """The `cache` tier: successful non-streamed answers by exact request hash."""

    ttl_seconds: int = Field(3600, ge=1)
    max_entry_bytes: int = Field(262_144, ge=1024)
    flush_interval_seconds: float = Field(0.1, gt=0)


class FallbackJitter(Section):
    """A random pause before each fallback (the seed design's 1-3 s); off by default."""

    enabled: bool = False
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(3.0, ge=0)


class ResilienceSettings(Section):
    """How a request walks its chain (SPEC §6)."""

    # One deadline for the whole walk: every attempt, retry, backoff and jitter included.
    deadline_seconds: float = Field(30.0, gt=0)
    # Every attempt, streamed or not, must produce its first content token within this (connect,
    # response headers and first token included) or it fails over; never more than what is left
    # of the deadline. `stream_ttft_seconds` is its old name, still accepted.
    ttft_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("ttft_seconds", "stream_ttft_seconds")
    )
    # Once content flows, a silence longer than this between two chunks is a stall.
    stall_seconds: float = Field(10.0, gt=0)
    # A stream that breaks after content reached the client is continued on the next usable
    # deployment (docs/resilience.md), at most `max_continuations` times.
    stream_resume: bool = True
    max_continuations: int = Field(2, ge=0, le=5)
    degraded_message: str = Field(
        "The service is under heavy load or partly unavailable. Please try again shortly.",
        min_length=1,
        max_length=4000,
    )
    # How often each API process reconciles breakers and statistics with Redis.
    sync_interval_seconds: float = Field(0.5, gt=0)
    fallback_jitter: FallbackJitter = FallbackJitter()
    retry: RetrySettings = RetrySettings()
    budget: BudgetSettings = BudgetSettings()
    breaker: BreakerSettings = BreakerSettings()
    health: HealthSettings = HealthSettings()
    cache: CacheSettings = CacheSettings()
