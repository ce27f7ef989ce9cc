"""The chain executor: walks a request's plan until a deployment answers, then the tiers.

For each deployment of the plan (SPEC §6, docs/resilience.md):

1. skip it if it is disabled, the health monitor says it is unhealthy, or its breaker rejects
   the call;
2. every attempt after the request's first needs a token from the retry budget; without one the
   walk stops and the tiers answer;
3. open it streamed and wait for its first content token within its time-to-first-token
   deadline (connect and response headers included), never longer than what is left of the
   walk's deadline; a whole answer is then read with a stall deadline between chunks and
   assembled, a stream is handed to the client;
4. a success and a failure are reported to the breaker and the health monitor;
5. a retryable failure (connect, 408, 429, 5xx, a cut stream) is retried on the same
   deployment up to the chain's `max_retries`, after full-jitter backoff honouring `Retry-After`
   up to a cap; a timeout has already spent its share of the walk, so it fails over at once
   (and is retried only when nothing else is left); then the walk moves on;
6. an upstream 400 that says the prompt is too long goes to a model with a larger context; a
   content-policy refusal ends the walk as 400 `content_filter` (unless the model names a
   `content_policy_fallback`); any other 400/413/422 ends it as the client's fault.

When nothing answered: the `cache` tier (if the chain has it), then `degraded` (if it has it),
else 503 (504 when only timeouts happened). A stream that breaks after content reached the
client is continued elsewhere by `resume` (services/routing/resume.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from services.config import Deployment, RetrySettings, Settings
from services.errors import (
    GatewayError,
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from services.platform.tracing import Tracing
from services.providers.base import ChunkStream, Json
from services.providers.shapes import Assembler
from services.resilience.backoff import backoff_delay
from services.resilience.breaker import Admission
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.routing.deployment_gate import DeploymentGate
from services.routing.hedging import hedged_open
from services.routing.outcomes import (
    Attempt,
    Failed,
    Opened,
    Routed,
    RoutedStream,
    Walk,
    exhausted,
)
from services.routing.rejections import rejection_targets
from services.routing.response_cache import ResponseCache
from services.routing.resume import resume, stream_broke
from services.routing.router import Candidate, Plan, Router
from services.routing.spans import end_attempt, start_attempt
from services.routing.tiers import ReplayedStream, completion_chunks, degraded_completion

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Attempt", "ChainExecutor", "Failed", "Opened", "Routed", "RoutedStream"]

T = TypeVar("T")


class ChainExecutor:
    """Walks plans with breakers, health, the retry budget, backoff, deadlines and tiers."""

    def __init__(
        self,
        router: Router,
        settings: Settings,
        *,
        breakers: BreakerStore,
        health: HealthMonitor,
        budget: RetryBudget,
        cache: ResponseCache,
        stats: FallbackStatistics,
        disabled: set[str] | None = None,
        deployments: Mapping[str, tuple[str, Deployment]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._router = router
        self._tracing = tracing
        self._all = settings
        self._settings = settings.resilience
        self._breakers = breakers
        self._health = health
        self._budget = budget
        self._cache = cache
        self._stats = stats
        self.gate = DeploymentGate(
            settings,
            breakers=breakers,
            health=health,
            budget=budget,
            stats=stats,
            disabled=set() if disabled is None else disabled,
            # By name, including replicas the capacity planner adds later (the gateway's table).
            deployments=(
                deployments
                if deployments is not None
                else {name: (model, d) for model, name, d in settings.deployments()}
            ),
            clock=clock,
        )
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    # -- entry points --------------------------------------------------------------------------

    async def complete(self, selector: str, request: Json) -> Routed | Failed:
        """Answer a non-streamed request (read from the upstream as a stream, assembled)."""
        walk = Walk(deadline=self._clock() + self._settings.deadline_seconds)
        try:
            return await self._complete(selector, request, walk)
        except GatewayError as exc:
            return Failed(exc, tuple(walk.log))

    async def open_stream(self, selector: str, request: Json) -> RoutedStream | Failed:
        """Answer a streamed request: return once a deployment has produced its first content."""
        walk = Walk(deadline=self._clock() + self._settings.deadline_seconds)
        try:
            return await self._open_stream(selector, request, walk)
        except GatewayError as exc:
            return Failed(exc, tuple(walk.log))

    async def _complete(self, selector: str, request: Json, walk: Walk) -> Routed:
        resolved = self._router.plan(selector)
        tiers = resolved.policy.tiers
        found = await self._walk(resolved, request, walk, self._assemble, bounded=True)
        if found is not None:
            (body, stream), candidate, route = found
            if "cache" in tiers:
                self._cache.remember(self._cache.key(selector, request), body)
            return Routed(
                body=body,
                model=candidate.model,
                deployment=candidate.provider.name,
                attempts=walk.attempts,
                route=route,
                log=walk.log,
                malformed=stream.malformed,
                usage_rejected=stream.usage_rejected,
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

    async def _open_stream(self, selector: str, request: Json, walk: Walk) -> RoutedStream:
        resolved = self._router.plan(selector)
        tiers = resolved.policy.tiers

        async def opened(result: Opened) -> Opened:
            return result

        found = await self._walk(resolved, request, walk, opened, bounded=False)
        if found is not None:
            result, candidate, route = found
            return RoutedStream(
                head=result.head,
                stream=result.stream,
                rest=result.rest,
                model=candidate.model,
                deployment=candidate.provider.name,
                attempts=walk.attempts,
                route=route,
                log=walk.log,
                ttft_seconds=result.ttft,
                selector=selector,
                request=request,
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
            selector=selector,
            request=request,
        )

    async def stream_broke(self, routed: RoutedStream, failure: UpstreamError) -> None:
        """A stream failed after its first token: the breaker and health monitor hear of it,
        and the ledger's attempt log (services/routing/resume.py)."""
        await stream_broke(self.gate, routed, failure)

    async def resume(self, routed: RoutedStream, sent_text: str) -> Opened | None:
        """Continue a broken stream on the next usable deployment of its plan; None if none
        could (services/routing/resume.py)."""
        return await resume(self.gate, self._router.candidates(routed.selector), routed, sent_text)

    async def _assemble(self, opened: Opened) -> tuple[Json, ChunkStream]:
        """Read the rest of an opened stream into one chat.completion."""
        assembler = Assembler()
        try:
            for chunk in opened.head:
                assembler.add(chunk)
            async for chunk in opened.rest:
                assembler.add(chunk)
        finally:
            await opened.stream.aclose()
        return assembler.completion(), opened.stream

    # -- the walk ------------------------------------------------------------------------------

    async def _walk(
        self,
        resolved: Plan,
        request: Json,
        walk: Walk,
        finish: Callable[[Opened], Awaitable[T]],
        *,
        bounded: bool,
    ) -> tuple[T, Candidate, str] | None:
        plan, hedge = deque(resolved.candidates), resolved.policy.hedge
        self._budget.deposit()
        while plan:
            candidate = plan.popleft()
            name = candidate.provider.name
            if self._passed_over(name, walk):
                continue
            retries = 0
            while True:
                admission = await self.gate.admit(name)
                if admission is Admission.REJECT:
                    walk.skipped.setdefault(name, "circuit breaker open")
                    break
                probe = admission is Admission.PROBE
                remaining = await self._time_for_attempt(name, probe, retries, walk)
                if remaining is None:
                    return None
                walk.attempts += 1
                walk.retries += 1 if retries else 0
                started = self._clock()
                # A whole answer must also arrive in time; a stream, once it flows, only must
                # not stall.
                limit = min(remaining, self.gate.attempt_seconds(name)) if bounded else None
                ttft = min(self.gate.ttft_seconds(name), remaining)
                winner, winner_probe = candidate, probe
                span = self._attempt_span(candidate, walk.attempts, retries, probe)
                try:
                    if hedge.enabled and not retries:
                        opened, winner, winner_probe = await hedged_open(
                            self.gate, candidate, probe, request, hedge, plan, walk, limit
                        )
                    else:
                        opened = await self.gate.open(candidate, request, ttft, limit)
                    result = await finish(opened)
                except UpstreamError as exc:
                    failure: UpstreamError = exc
                    walk.deadline_hit = isinstance(exc, UpstreamTimeout) and (
                        self._clock() >= walk.deadline - 0.01
                    )
                    if span is not None:
                        end_attempt(span, None, exc)
                except BaseException as exc:
                    if span is not None:
                        end_attempt(span, None, exc)
                    await self.gate.release(name, probe)  # cancelled: the client went away
                    raise
                else:
                    elapsed = self._clock() - started
                    won = winner.provider.name
                    if span is not None:
                        end_attempt(span, won, None)
                    slow = await self.gate.succeeded(won, winner_probe, opened.ttft)
                    walk.log.append(Attempt(won, winner.model, True, elapsed, 200, None, slow))
                    route = "primary" if winner.model == resolved.policy.first_model else "fallback"
                    self._stats.served(route, winner.model, walk.attempts, walk.retries)
                    return result, winner, route
                elapsed = self._clock() - started
                await self._failed(candidate, failure, probe, elapsed, walk)
                if walk.deadline_hit:
                    return None
                if self._replan(failure, candidate, plan, walk):
                    break
                delay = self._retry_delay(failure, retries, resolved.policy.retry, plan, walk)
                if delay is None:
                    break
                await self._sleep(delay)
                retries += 1
        return None

    async def _time_for_attempt(
        self, name: str, probe: bool, retries: int, walk: Walk
    ) -> float | None:
        """What is left of the walk for the next attempt on `name`; None (its probe permit
        returned) when the retry budget is spent or the deadline has passed."""
        if walk.attempts and not self._budget.try_withdraw():
            walk.budget_exhausted = True
            await self.gate.release(name, probe)
            return None
        if walk.attempts and not retries:
            await self._fallback_jitter(walk)
        remaining = walk.deadline - self._clock()
        if remaining <= 0:
            walk.deadline_hit = True
            await self.gate.release(name, probe)
            return None
        return remaining

    def _attempt_span(
        self, candidate: Candidate, number: int, retries: int, probe: bool
    ) -> Span | None:
        """The attempt's span when tracing is on (services/routing/spans.py)."""
        if self._tracing is None:
            return None
        name = candidate.provider.name
        found = self.gate.deployments.get(name)
        return start_attempt(self._tracing, candidate, found[1] if found else None, number,
                             retries, self._breakers.state(name).state, probe)  # fmt: skip

    def _passed_over(self, name: str, walk: Walk) -> bool:
        """Whether `name` is skipped without a call (noted with the reason, for the 503)."""
        if name in self.gate.disabled:
            walk.skipped[name] = "disabled by an operator"
        elif not self._health.healthy(name):
            walk.skipped[name] = "unhealthy"
        else:
            return False
        return True

    def _replan(
        self, failure: UpstreamError, candidate: Candidate, plan: deque[Candidate], walk: Walk
    ) -> bool:
        """Re-plan after a 400 that another model could take; raise when none can."""
        if not isinstance(failure, UpstreamContextLength | UpstreamContentPolicy):
            return False
        later = [step.model for step in plan]
        targets, error = rejection_targets(self._all, candidate.model, failure, later)
        tried = {a.deployment for a in walk.log}
        fresh = [
            c
            for target in dict.fromkeys(targets)
            for c in self._router.candidates(target)
            if c.provider.name not in tried
        ]
        if not fresh:
            raise error from failure
        logger.info("{} from {}: trying {}", type(failure).__name__.removeprefix("Upstream"),
                    candidate.model, ", ".join(dict.fromkeys(c.model for c in fresh)))  # fmt: skip
        plan.clear()
        plan.extend(fresh)
        return True

    def _retry_delay(
        self,
        failure: UpstreamError,
        retries: int,
        policy: RetrySettings,
        rest: deque[Candidate],
        walk: Walk,
    ) -> float | None:
        """The wait before retrying the same deployment, or None to move on."""
        if not failure.retryable or retries >= policy.max_retries:
            return None
        if isinstance(failure, UpstreamTimeout) and any(
            self.gate.usable(c.provider.name) for c in rest
        ):
            return None  # the timeout spent its share of the walk: let the next one have it
        delay = backoff_delay(
            retries + 1,
            base=policy.base_delay_seconds,
            cap=policy.max_delay_seconds,
            draw=self._rng.random(),
            retry_after=failure.retry_after if isinstance(failure, UpstreamHTTPError) else None,
            max_retry_after=policy.max_retry_after_seconds,
        )
        if delay is None or self._clock() + delay >= walk.deadline:
            return None
        return delay

    async def _fallback_jitter(self, walk: Walk) -> None:
        jitter = self._settings.fallback_jitter
        if jitter.enabled:
            pause = self._rng.uniform(jitter.min_seconds, jitter.max_seconds)
            await self._sleep(max(0.0, min(pause, walk.deadline - self._clock())))

    async def _failed(
        self, candidate: Candidate, failure: UpstreamError, probe: bool, seconds: float, walk: Walk
    ) -> None:
        walk.failures.append(failure)
        await self.gate.failed(candidate, failure, probe, seconds, walk.log)

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
        raise exhausted(selector, walk)
