"""The chain executor: walks a request's plan until a deployment answers, then the tiers.

For each deployment of the plan (SPEC §6):

1. skip it if the health monitor says it is unhealthy or its breaker rejects the call;
2. every attempt after the request's first needs a token from the retry budget; without one the
   walk stops and the tiers answer;
3. call it within what is left of the request's deadline (and, for a stream, within the
   time-to-first-token deadline: the first content chunk is read before anything is sent, so
   failing over stays invisible to the client);
4. a success (or a slow success, if the breaker counts those) and a failure are reported to the
   breaker and the health monitor; an upstream 400/413/422 ends the walk as the client's fault;
5. a retryable failure is retried on the same deployment, after full-jitter backoff honouring
   `Retry-After`, only when no later deployment of the plan is usable; otherwise the walk moves
   on at once (after the optional fallback jitter).

When nothing answered: the `cache` tier (if the chain has it), then `degraded` (if it has it),
else 503 (504 when only timeouts happened).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from loguru import logger

from services.backoff import backoff_delay
from services.breaker import Admission, Outcome
from services.breaker_store import BreakerStore
from services.config import ResilienceSettings
from services.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamExhausted,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from services.fallback_stats import FallbackStatistics
from services.health_monitor import HealthMonitor
from services.providers.base import ChunkStream, Json
from services.response_cache import ResponseCache
from services.retry_budget import RetryBudget
from services.router import Candidate, Router
from services.tiers import ReplayedStream, completion_chunks, degraded_completion

T = TypeVar("T")

# Upstream statuses that say the request itself is wrong: another deployment would say the same.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})
# 4xx answers that still say something about the upstream's health.
BREAKER_COUNTED_4XX = frozenset({408, 429})
FALLBACK_HEADER = {"primary": "false", "fallback": "true", "cache": "cache", "degraded": "degraded"}


class UpstreamRejected(InvalidRequest):
    """The upstream refused the request as invalid; retrying elsewhere would not help."""

    code = "upstream_rejected"


@dataclass(slots=True)
class Attempt:
    """One upstream call, for the ledger and the metrics."""

    deployment: str
    model: str
    ok: bool
    seconds: float
    status: int = 0  # the upstream's HTTP status when it answered one
    error: str | None = None  # the UpstreamError class, when it failed
    counted: bool = False  # whether the breaker counted it as a failure


@dataclass(slots=True, kw_only=True)
class Route:
    """How an answer was obtained: the model, the deployment (none for a tier), the upstream
    attempts made, and the route: primary, fallback, cache or degraded."""

    model: str
    deployment: str | None
    attempts: int
    route: str
    log: list[Attempt] = field(default_factory=list)
    ttft_seconds: float | None = None

    @property
    def fallback(self) -> str:
        """The `X-Router-Fallback` value: false, true, cache or degraded."""
        return FALLBACK_HEADER[self.route]


@dataclass(slots=True, kw_only=True)
class Routed(Route):
    """A non-streamed answer."""

    body: Json


@dataclass(slots=True, kw_only=True)
class RoutedStream(Route):
    """An accepted stream: chunks already received (held back until content) and the rest."""

    head: list[Json]
    stream: ChunkStream
    rest: AsyncIterator[Json]


@dataclass(slots=True)
class Walk:
    """One request's progress through its plan."""

    deadline: float
    attempts: int = 0
    retries: int = 0
    failures: list[UpstreamError] = field(default_factory=list)
    log: list[Attempt] = field(default_factory=list)
    deadline_hit: bool = False
    budget_exhausted: bool = False


def counts_against_breaker(failure: UpstreamError) -> bool:
    """Whether a failure says the upstream is unwell (4xx other than 408/429 say otherwise)."""
    if isinstance(failure, UpstreamHTTPError) and 400 <= failure.status < 500:
        return failure.status in BREAKER_COUNTED_4XX
    return True


def has_content(chunk: Json) -> bool:
    """Whether a chunk carries something the client sees (text, a tool call, an end)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return bool(chunk.get("usage"))


async def read_until_content(chunks: AsyncIterator[Json], deployment: str) -> list[Json]:
    """Hold back chunks until one carries content: failing over is still invisible until then."""
    head: list[Json] = []
    async for chunk in chunks:
        head.append(chunk)
        if has_content(chunk):
            return head
    if not head:
        raise UpstreamError(deployment, "stream ended before any chunk")
    return head


def _reason(failure: UpstreamError) -> str:
    if isinstance(failure, UpstreamHTTPError):
        return f"HTTP {failure.status}"
    return type(failure).__name__.removeprefix("Upstream")


class ChainExecutor:
    """Walks plans with breakers, health, the retry budget, backoff, deadlines and tiers."""

    def __init__(
        self,
        router: Router,
        settings: ResilienceSettings,
        *,
        breakers: BreakerStore,
        health: HealthMonitor,
        budget: RetryBudget,
        cache: ResponseCache,
        stats: FallbackStatistics,
        disabled: set[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._router = router
        self._settings = settings
        self._breakers = breakers
        self._health = health
        self._budget = budget
        self._cache = cache
        self._stats = stats
        self._disabled = set() if disabled is None else disabled
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def complete(self, selector: str, request: Json) -> Routed:
        """Answer a non-streamed request."""
        tiers = self._router.tiers(selector)
        walk = Walk(deadline=self._clock() + self._settings.deadline_seconds)

        async def call(candidate: Candidate) -> Json:
            return await candidate.provider.complete(request)

        found = await self._walk(selector, walk, call)
        if found is not None:
            body, candidate, route = found
            if "cache" in tiers:
                self._cache.remember(self._cache.key(selector, request), body)
            return Routed(
                body=body,
                model=candidate.model,
                deployment=candidate.provider.name,
                attempts=walk.attempts,
                route=route,
                log=walk.log,
            )
        body, route = await self._from_tiers(selector, tiers, request, walk)
        model = str(body.get("model") or route)
        return Routed(
            body=body,
            model=model,
            deployment=None,
            attempts=walk.attempts,
            route=route,
            log=walk.log,
        )

    async def open_stream(self, selector: str, request: Json) -> RoutedStream:
        """Answer a streamed request: return once a deployment has produced its first content."""
        tiers = self._router.tiers(selector)
        walk = Walk(deadline=self._clock() + self._settings.deadline_seconds)
        ttft = self._settings.stream_ttft_seconds

        async def call(
            candidate: Candidate,
        ) -> tuple[list[Json], ChunkStream, AsyncIterator[Json], float]:
            name = candidate.provider.name
            started = self._clock()
            stream = await candidate.provider.open_stream(request)
            try:
                rest = aiter(stream)
                try:
                    async with asyncio.timeout(ttft):
                        head = await read_until_content(rest, name)
                except TimeoutError as exc:
                    raise UpstreamTimeout(name, f"no first token within {ttft:g}s") from exc
            except BaseException:
                await stream.aclose()
                raise
            return head, stream, rest, self._clock() - started

        found = await self._walk(selector, walk, call)
        if found is not None:
            (head, stream, rest, ttft), candidate, route = found
            return RoutedStream(
                head=head,
                stream=stream,
                rest=rest,
                model=candidate.model,
                deployment=candidate.provider.name,
                attempts=walk.attempts,
                route=route,
                log=walk.log,
                ttft_seconds=ttft,
            )
        body, route = await self._from_tiers(selector, tiers, request, walk)
        replay = ReplayedStream()
        return RoutedStream(
            head=completion_chunks(body),
            stream=replay,
            rest=aiter(replay),
            model=str(body.get("model") or route),
            deployment=None,
            attempts=walk.attempts,
            route=route,
            log=walk.log,
        )

    async def stream_broke(self, deployment: str) -> None:
        """A stream failed after its first token: the breaker and health monitor hear of it."""
        self._stats.count("streams_interrupted")
        self._health.observe(deployment, False, 0.0)
        await self._breakers.record(deployment, Outcome.FAILURE)

    # -- the walk ------------------------------------------------------------------------------

    async def _walk(
        self, selector: str, walk: Walk, call: Callable[[Candidate], Awaitable[T]]
    ) -> tuple[T, Candidate, str] | None:
        plan = self._router.candidates(selector)
        self._budget.deposit()
        for index, candidate in enumerate(plan):
            name = candidate.provider.name
            if name in self._disabled or not self._health.healthy(name):
                continue
            retries = 0
            while True:
                admission = await self._breakers.admit(name)
                if admission is Admission.REJECT:
                    break
                probe = admission is Admission.PROBE
                if walk.attempts and not self._budget.try_withdraw():
                    walk.budget_exhausted = True
                    await self._release(name, probe)
                    return None
                if walk.attempts and not retries:
                    await self._fallback_jitter(walk)
                remaining = walk.deadline - self._clock()
                if remaining <= 0:
                    walk.deadline_hit = True
                    await self._release(name, probe)
                    return None
                walk.attempts += 1
                started = self._clock()
                try:
                    async with asyncio.timeout(remaining) as scope:
                        result = await call(candidate)
                except TimeoutError:
                    walk.deadline_hit = scope.expired()
                    failure: UpstreamError = UpstreamTimeout(name, "the request deadline passed")
                except UpstreamError as exc:
                    failure = exc
                except BaseException:
                    await self._release(name, probe)  # cancelled: the client went away
                    raise
                else:
                    elapsed = self._clock() - started
                    slow = await self._succeeded(name, probe, elapsed)
                    walk.log.append(Attempt(name, candidate.model, True, elapsed, 200, None, slow))
                    route = "primary" if candidate.model == plan[0].model else "fallback"
                    self._stats.served(route, candidate.model, walk.attempts, walk.retries)
                    return result, candidate, route
                elapsed = self._clock() - started
                status = failure.status if isinstance(failure, UpstreamHTTPError) else 0
                walk.log.append(
                    Attempt(
                        name,
                        candidate.model,
                        False,
                        elapsed,
                        status,
                        type(failure).__name__,
                        counts_against_breaker(failure),
                    )
                )
                walk.failures.append(failure)
                await self._failed(candidate, failure, probe, elapsed, walk)
                if walk.deadline_hit:
                    return None
                delay = self._retry_delay(failure, retries, plan[index + 1 :], walk)
                if delay is None:
                    break
                await self._sleep(delay)
                retries += 1
                walk.retries += 1
        return None

    def _retry_delay(
        self, failure: UpstreamError, retries: int, rest: list[Candidate], walk: Walk
    ) -> float | None:
        """The wait before retrying the same deployment, or None to move on."""
        retry = self._settings.retry
        if not failure.retryable or retries >= retry.max_retries:
            return None
        if any(
            c.provider.name not in self._disabled
            and self._health.healthy(c.provider.name)
            and self._breakers.usable(c.provider.name)
            for c in rest
        ):
            return None  # another deployment can take it now: no waiting, no second call here
        delay = backoff_delay(
            retries + 1,
            base=retry.base_delay_seconds,
            cap=retry.max_delay_seconds,
            draw=self._rng.random(),
            retry_after=failure.retry_after if isinstance(failure, UpstreamHTTPError) else None,
            max_retry_after=retry.max_retry_after_seconds,
        )
        if delay is None or self._clock() + delay >= walk.deadline:
            return None
        return delay

    async def _fallback_jitter(self, walk: Walk) -> None:
        jitter = self._settings.fallback_jitter
        if jitter.enabled:
            pause = self._rng.uniform(jitter.min_seconds, jitter.max_seconds)
            await self._sleep(max(0.0, min(pause, walk.deadline - self._clock())))

    async def _succeeded(self, name: str, probe: bool, seconds: float) -> bool:
        slow_after = self._breakers.policy(name).slow_call_seconds
        slow = slow_after is not None and seconds > slow_after
        if slow:
            logger.warning("{} answered in {:.2f}s: counted as a slow call", name, seconds)
        await self._breakers.record(name, Outcome.FAILURE if slow else Outcome.SUCCESS, probe=probe)
        self._health.observe(name, True, seconds)
        return slow

    async def _failed(
        self, candidate: Candidate, failure: UpstreamError, probe: bool, seconds: float, walk: Walk
    ) -> None:
        name = candidate.provider.name
        counted = counts_against_breaker(failure)
        await self._breakers.record(
            name, Outcome.FAILURE if counted else Outcome.IGNORED, probe=probe
        )
        if counted:
            self._health.observe(name, False, seconds)
        logger.warning("attempt on {} ({}) failed: {}", name, candidate.model, failure)
        if isinstance(failure, UpstreamHTTPError) and failure.status in CLIENT_FAULT_STATUSES:
            rejected = UpstreamRejected(f"{candidate.model} rejected the request: {failure.detail}")
            rejected.attempt_log = walk.log
            raise rejected from failure

    async def _release(self, name: str, probe: bool) -> None:
        if probe:
            await self._breakers.record(name, Outcome.IGNORED, probe=True)

    # -- tiers ---------------------------------------------------------------------------------

    async def _from_tiers(
        self, selector: str, tiers: frozenset[str], request: Json, walk: Walk
    ) -> tuple[Json, str]:
        if walk.budget_exhausted:
            self._stats.count("budget_exhausted")
        if walk.deadline_hit:
            self._stats.count("deadline_exceeded")
        if "cache" in tiers:
            cached = await self._cache.lookup(self._cache.key(selector, request))
            if cached is not None:
                self._stats.served("cache", None, walk.attempts, walk.retries)
                return cached, "cache"
        if "degraded" in tiers:
            self._stats.served("degraded", None, walk.attempts, walk.retries)
            return degraded_completion(self._settings.degraded_message), "degraded"
        self._stats.served("failed", None, walk.attempts, walk.retries)
        raise self._exhausted(selector, walk)

    @staticmethod
    def _exhausted(selector: str, walk: Walk) -> UpstreamExhausted:
        summary = "; ".join(f"{f.deployment}: {_reason(f)}" for f in walk.failures)
        if walk.deadline_hit:
            error = UpstreamExhausted(
                f"'{selector}' did not answer within the request deadline ({summary})",
                status=504,
                code="deadline_exceeded",
            )
        elif walk.budget_exhausted:
            error = UpstreamExhausted(
                f"every usable upstream of '{selector}' failed and the retry budget is spent "
                f"({summary})",
                status=503,
                code="retry_budget_exhausted",
            )
        elif not walk.failures:
            error = UpstreamExhausted(
                f"no deployment of '{selector}' is available (circuit breakers open or "
                "deployments unhealthy)",
                status=503,
                code="no_deployment_available",
            )
        else:
            timeouts = all(isinstance(f, UpstreamTimeout) for f in walk.failures)
            error = UpstreamExhausted(
                f"every upstream of '{selector}' failed ({summary})",
                status=504 if timeouts else 503,
            )
        error.headers["Retry-After"] = "1"
        error.headers["X-Router-Attempts"] = str(walk.attempts)
        error.attempt_log = walk.log
        return error
