"""The chain walk with scripted upstreams, a fake clock and a recording sleep: no real waiting."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.config import Deployment, HedgeSettings, ResilienceSettings, Settings
from services.errors import (
    UpstreamConnectError,
    UpstreamContextLength,
    UpstreamError,
    UpstreamExhausted,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from services.platform.redis_connection import async_client
from services.platform.redis_gate import RedisGate
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.routing.executor import ChainExecutor, Failed
from services.routing.hedging import hedge_delay
from services.routing.response_cache import ResponseCache
from services.routing.router import Router

ANSWER_CHUNKS = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "o"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "k"}, "finish_reason": "stop"}]},
]


class Chunks:
    """A ChunkStream over a fixed list of chunks."""

    malformed = 0
    usage_rejected = False

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks = [dict(c) for c in chunks]

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[dict[str, Any]]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        return None


class Scripted:
    """A provider that raises or answers from a list, one item per call."""

    def __init__(self, name: str, outcomes: list[UpstreamError | None]) -> None:
        self.name = name
        self.upstream_model = name
        self.outcomes = outcomes
        self.calls = 0
        self.requests: list[dict[str, Any]] = []

    async def open_stream(self, request: dict[str, Any]) -> Any:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        self.requests.append(request)
        if outcome is not None:
            raise outcome
        return Chunks(ANSWER_CHUNKS)

    async def probe(self) -> None:
        return None


class Time:
    """A fake clock whose sleep records the delay and moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
async def redis_conn(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_url)
    yield client
    await client.aclose()


def build(redis: aioredis.Redis, providers: dict[str, Scripted], clock: Time,
          models: dict[str, Any] | None = None, chains: dict[str, Any] | None = None,
          **resilience: Any) -> tuple[ChainExecutor, FallbackStatistics]:  # fmt: skip
    model_settings = {
        name: {
            "deployments": [{"provider": "openai", "base_url": "http://x/v1", "model": name}],
            **(models or {}).get(name, {}),
        }
        for name in providers
    }
    settings = Settings.model_validate({
        "models": model_settings,
        "chains": {"chain": [*providers, "degraded"], "bare": list(providers), **(chains or {})},
        "sessions": {"default_selector": "chain"},
        "resilience": resilience,
    })  # fmt: skip
    for p in providers.values():
        p.name = f"{p.name}:0"
    gate = RedisGate(redis)
    settings_r: ResilienceSettings = settings.resilience
    by_name = {p.name: p for p in providers.values()}
    breakers = BreakerStore(
        redis, gate, dict.fromkeys(by_name, settings_r.breaker), prefix="x:", clock=clock
    )
    stats = FallbackStatistics(redis, gate, prefix="x:")
    budget = settings_r.budget
    executor = ChainExecutor(
        Router(settings, {name: [p] for name, p in providers.items()}),  # type: ignore[list-item]
        settings,
        breakers=breakers,
        health=HealthMonitor(settings_r.health, by_name),  # type: ignore[arg-type]
        budget=RetryBudget(
            ratio=budget.ratio,
            min_per_second=budget.min_per_second,
            window_seconds=budget.window_seconds,
            clock=clock,
        ),
        cache=ResponseCache(redis, gate, settings_r.cache, prefix="x:", clock=clock),
        stats=stats,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(3),
    )
    return executor, stats


REQUEST = {"messages": [{"role": "user", "content": "hi"}]}


async def test_fallback_jitter_is_off_by_default(redis_conn: aioredis.Redis) -> None:
    """With defaults (no retries asked for) a failed primary hands over with no pause."""
    clock = Time()
    a, b = Scripted("a", [UpstreamConnectError("a", "refused")]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, clock, retry={"max_retries": 0})
    routed = await executor.complete("chain", REQUEST)
    assert (routed.model, routed.attempts, routed.fallback) == ("b", 2, "true")
    assert clock.sleeps == []


async def test_fallback_jitter_pauses_between_one_and_three_seconds(
    redis_conn: aioredis.Redis,
) -> None:
    """Enabled, the seed's jitter sleeps 1-3 s before each fallback (never before the first call)."""
    clock = Time()
    a, b = Scripted("a", [UpstreamConnectError("a", "refused")]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, clock, fallback_jitter={"enabled": True},
                        retry={"max_retries": 0})  # fmt: skip
    await executor.complete("chain", REQUEST)
    assert len(clock.sleeps) == 1 and 1 <= clock.sleeps[0] <= 3


async def test_retry_after_is_honoured_on_the_last_deployment(redis_conn: aioredis.Redis) -> None:
    """A 429 with Retry-After: 2 on the only deployment is retried after exactly 2 s."""
    clock = Time()
    only = Scripted("only", [UpstreamHTTPError("only", 429, "slow down", retry_after=2.0), None])
    executor, stats = build(redis_conn, {"only": only}, clock)
    routed = await executor.complete("bare", REQUEST)
    assert routed.attempts == 2 and clock.sleeps == [2.0]
    assert stats.local["tier:primary"] == 1


async def test_retry_after_longer_than_allowed_is_not_waited(redis_conn: aioredis.Redis) -> None:
    """Retry-After beyond max_retry_after_seconds ends the walk instead of sleeping."""
    clock = Time()
    only = Scripted("only", [UpstreamHTTPError("only", 429, "later", retry_after=60.0), None])
    executor, _ = build(redis_conn, {"only": only}, clock)
    failed = await executor.complete("bare", REQUEST)
    assert isinstance(failed, Failed) and isinstance(failed.error, UpstreamExhausted)
    assert failed.error.status == 503 and clock.sleeps == [] and only.calls == 1
    assert [(a.deployment, a.ok, a.status) for a in failed.log] == [("only:0", False, 429)], (
        "the walk's attempt log comes back with the failure"
    )


async def test_backoff_that_would_pass_the_deadline_is_not_taken(
    redis_conn: aioredis.Redis,
) -> None:
    """A Retry-After wait that ends after the request deadline is not slept."""
    clock = Time()
    only = Scripted("only", [UpstreamHTTPError("only", 503, "busy", retry_after=4.0), None])
    executor, _ = build(redis_conn, {"only": only}, clock, deadline_seconds=3)
    failed = await executor.complete("bare", REQUEST)
    assert isinstance(failed, Failed) and isinstance(failed.error, UpstreamExhausted)
    assert clock.sleeps == [] and only.calls == 1


async def test_retries_use_full_jitter_backoff_within_bounds(redis_conn: aioredis.Redis) -> None:
    """Two retries wait within [0, 0.5] then [0, 1.0] seconds (default base 0.5 s)."""
    clock = Time()
    busy = UpstreamHTTPError("only", 503, "busy")
    only = Scripted("only", [busy, busy, None])
    executor, _ = build(redis_conn, {"only": only}, clock)
    routed = await executor.complete("bare", REQUEST)
    assert routed.attempts == 3 and len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5 and 0 <= clock.sleeps[1] <= 1.0


async def test_spent_budget_stops_the_walk_at_the_tiers(redis_conn: aioredis.Redis) -> None:
    """With no budget left a failed primary is not followed by a fallback: degraded answers."""
    clock = Time()
    a, b = Scripted("a", [UpstreamConnectError("a", "refused")]), Scripted("b", [None])
    executor, stats = build(redis_conn, {"a": a, "b": b}, clock,
                            budget={"ratio": 0, "min_per_second": 0})  # fmt: skip
    routed = await executor.complete("chain", REQUEST)
    assert routed.route == "degraded" and b.calls == 0
    assert stats.local["budget_exhausted"] == 1


async def test_a_500_is_retried_on_the_same_deployment_before_failing_over(
    redis_conn: aioredis.Redis,
) -> None:
    """A retryable failure is retried on the same deployment (full jitter) even when a fallback
    is usable; a chain's own policy sets how often."""
    clock = Time()
    busy = UpstreamHTTPError("a", 500, "busy")
    a, b = Scripted("a", [busy, busy, busy, busy, None]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, clock,
                        chains={"seed": {"steps": ["a", "b"],
                                         "retry": {"max_retries": 3, "base_delay_seconds": 1}}})  # fmt: skip
    routed = await executor.complete("seed", REQUEST)
    assert (a.calls, b.calls, routed.model) == (4, 1, "b")
    assert len(clock.sleeps) == 3 and all(0 <= s <= 4 for s in clock.sleeps)


async def test_a_timeout_fails_over_at_once_but_is_retried_when_nothing_else_is_left(
    redis_conn: aioredis.Redis,
) -> None:
    """A first-token timeout spent its share of the walk: it is not retried while another
    deployment can take the request, and is retried when none can."""
    clock = Time()
    slow = UpstreamTimeout("a", "no first token")
    a, b = Scripted("a", [slow, None]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, clock)
    assert (await executor.complete("chain", REQUEST)).model == "b"
    assert a.calls == 1 and clock.sleeps == []
    only = Scripted("only", [UpstreamTimeout("only", "no first token"), None])
    executor, _ = build(redis_conn, {"only": only}, Time())
    assert (await executor.complete("bare", REQUEST)).attempts == 2


async def test_an_answer_from_another_model_is_a_fallback_even_when_the_first_has_no_deployment(
    redis_conn: aioredis.Redis,
) -> None:
    """The first model of the chain has no deployment up (planner replicas all down): the answer
    from the second is reported as a fallback."""
    clock = Time()
    a, b = Scripted("a", [None]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, clock)
    executor._router.set_replicas("a", [])
    executor._router._static["a"] = ()
    executor._router._deployments["a"] = ()
    routed = await executor.complete("chain", REQUEST)
    assert (routed.model, routed.route, routed.fallback) == ("b", "fallback", "true")


async def test_context_window_fallback_names_where_a_long_request_goes(
    redis_conn: aioredis.Redis,
) -> None:
    """`context_window_fallback` sends a too-long request to the named model, skipping others."""
    clock = Time()
    too_long = UpstreamContextLength(
        "a", 400, "maximum context length", code="context_length_exceeded"
    )
    a, b, c = Scripted("a", [too_long]), Scripted("b", [None]), Scripted("c", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b, "c": c}, clock,
                        models={"a": {"context_window_fallback": ["c"]}})  # fmt: skip
    routed = await executor.complete("chain", REQUEST)
    assert (routed.model, a.calls, b.calls, c.calls) == ("c", 1, 0, 1)


async def test_adaptive_hedge_delay_follows_the_deployments_own_ttft(
    redis_conn: aioredis.Redis,
) -> None:
    """Adaptive hedging waits the deployment's recent TTFT p95, within [after, max_after]."""
    a = Scripted("a", [None])
    executor, _ = build(redis_conn, {"a": a}, Time())
    adaptive = HedgeSettings(adaptive=True, after_seconds=0.2, max_after_seconds=2)
    assert hedge_delay(executor.gate.health, "a:0", adaptive) == 0.2  # nothing observed yet
    for ttft in [0.1] * 90 + [1.0] * 10:
        executor.gate.health.observe("a:0", True, ttft)
    assert hedge_delay(executor.gate.health, "a:0", adaptive) == pytest.approx(1.0)
    for _ in range(100):
        executor.gate.health.observe("a:0", True, 9.0)
    assert hedge_delay(executor.gate.health, "a:0", adaptive) == 2
    assert hedge_delay(executor.gate.health, "a:0", HedgeSettings(after_seconds=0.7)) == 0.7


async def test_deadlines_are_per_deployment_with_the_defaults_behind(
    redis_conn: aioredis.Redis,
) -> None:
    """A deployment's own ttft_seconds/stall_seconds win; others get 10 s and 10 s."""
    a, b = Scripted("a", [None]), Scripted("b", [None])
    executor, _ = build(redis_conn, {"a": a, "b": b}, Time())
    executor.gate.deployments = {
        "a:0": ("a", Deployment(provider="openai", base_url="http://x/v1", model="a",
                                ttft_seconds=120, stall_seconds=30)),
        "b:0": ("b", Deployment(provider="openai", base_url="http://x/v1", model="b")),
    }  # fmt: skip
    assert (executor.gate.ttft_seconds("a:0"), executor.gate.stall_seconds("a:0")) == (120, 30)
    assert (executor.gate.ttft_seconds("b:0"), executor.gate.stall_seconds("b:0")) == (10, 10)
