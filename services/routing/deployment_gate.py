"""Whether a deployment may be tried now, with which deadlines, and what its breaker and health
monitor hear of each attempt: the bookkeeping the chain walk, hedging and stream continuation
share (services/routing/executor.py, hedging.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from loguru import logger

from services.config import Deployment, Settings
from services.errors import (
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamRejected,
    UpstreamTimeout,
)
from services.providers.base import ChunkStream, Json
from services.resilience.breaker import Admission, Outcome
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.resilience.watchdog import Watchdog
from services.routing.attempt import (
    CLIENT_FAULT_STATUSES,
    breaker_outcome,
    read_until_content,
    watched,
)
from services.routing.outcomes import Attempt, Opened
from services.routing.router import Candidate


class DeploymentGate:
    """Per-deployment admission (disabled, health, breaker, budget), deadlines and outcomes."""

    def __init__(
        self,
        settings: Settings,
        *,
        breakers: BreakerStore,
        health: HealthMonitor,
        budget: RetryBudget,
        stats: FallbackStatistics,
        disabled: set[str],
        deployments: Mapping[str, tuple[str, Deployment]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.breakers = breakers
        self.health = health
        self.budget = budget
        self.stats = stats
        self.disabled = disabled
        # By name, including replicas the capacity planner adds later (the gateway's live table).
        self.deployments = deployments
        self.clock = clock

    # -- deadlines -----------------------------------------------------------------------------

    def ttft_seconds(self, name: str) -> float:
        """How long `name` may take to its first content token (its own, else the default)."""
        found = self.deployments.get(name)
        own = found[1].ttft_seconds if found is not None else None
        return own or self.settings.resilience.ttft_seconds

    def stall_seconds(self, name: str) -> float:
        """How long `name` may go silent between two chunks."""
        found = self.deployments.get(name)
        own = found[1].stall_seconds if found is not None else None
        return own or self.settings.resilience.stall_seconds

    def attempt_seconds(self, name: str) -> float:
        """How long one whole non-streamed attempt on `name` may take."""
        found = self.deployments.get(name)
        own = found[1].timeout_seconds if found is not None else None
        return own or self.settings.upstream.request_timeout_seconds

    def prefill(self, name: str) -> bool:
        """Whether `name` continues an answer from an assistant prefill."""
        found = self.deployments.get(name)
        return found[1].prefill if found is not None else False

    def model_of(self, name: str, default: str) -> str:
        """The model `name` serves."""
        found = self.deployments.get(name)
        return found[0] if found is not None else default

    # -- admission -----------------------------------------------------------------------------

    def usable(self, name: str) -> bool:
        """Enabled, healthy and admitted by its breaker's local mirror."""
        return (
            name not in self.disabled and self.health.healthy(name) and self.breakers.usable(name)
        )

    async def admit(self, name: str) -> Admission:
        """The breaker's word on one call (a probe when half-open)."""
        return await self.breakers.admit(name)

    async def release(self, name: str, probe: bool) -> None:
        """Give back a probe permit that was not used."""
        if probe:
            await self.breakers.record(name, Outcome.IGNORED, probe=True)

    # -- one attempt ---------------------------------------------------------------------------

    async def open(
        self, candidate: Candidate, request: Json, ttft: float, limit: float | None = None
    ) -> Opened:
        """Open `candidate` streamed and read until its first content, within `ttft`; the rest
        is guarded by the stall deadline, and the whole attempt by `limit` seconds if given."""
        name = candidate.provider.name
        started = self.clock()
        loop_deadline = None if limit is None else asyncio.get_running_loop().time() + limit
        watch = Watchdog(loop_deadline)
        stream: ChunkStream | None = None
        watch.bind()
        watch.begin(ttft)
        try:
            stream = await candidate.provider.open_stream(request)
            chunks = aiter(stream)
            head = await read_until_content(chunks, name)
        except asyncio.CancelledError:
            expired = watch.expired()
            watch.close()
            if stream is not None:
                await stream.aclose()
            if expired:
                raise UpstreamTimeout(name, f"no first token within {ttft:g}s") from None
            raise
        except BaseException:
            watch.close()
            if stream is not None:
                await stream.aclose()
            raise
        watch.end()
        rest = watched(chunks, name, self.stall_seconds(name), watch)
        return Opened(candidate, head, stream, rest, self.clock() - started)

    async def succeeded(self, name: str, probe: bool, seconds: float) -> bool:
        """Report a success (a slow one counts as a failure); answers whether it was slow."""
        slow_after = self.breakers.policy(name).slow_call_seconds
        slow = slow_after is not None and seconds > slow_after
        if slow:
            logger.warning("{} answered in {:.2f}s: counted as a slow call", name, seconds)
        await self.breakers.record(name, Outcome.FAILURE if slow else Outcome.SUCCESS, probe=probe)
        self.health.observe(name, True, seconds)
        return slow

    async def record_failure(
        self,
        candidate: Candidate,
        failure: UpstreamError,
        probe: bool,
        seconds: float,
        log: list[Attempt],
    ) -> bool:
        """Log the failed attempt and tell its breaker; answers whether it counted against it
        (the walk's `failed` and a stream's continuation share this)."""
        name = candidate.provider.name
        outcome = breaker_outcome(failure)
        counted = outcome is not Outcome.IGNORED
        status = failure.status if isinstance(failure, UpstreamHTTPError) else 0
        log.append(Attempt(name, candidate.model, False, seconds, status,
                           type(failure).__name__, counted))  # fmt: skip
        await self.breakers.record(name, outcome, probe=probe)
        return counted

    async def failed(
        self,
        candidate: Candidate,
        failure: UpstreamError,
        probe: bool,
        seconds: float,
        log: list[Attempt],
    ) -> None:
        """Report a failure and log the attempt; raise `UpstreamRejected` when the upstream said
        the request itself is wrong (another deployment would say the same)."""
        name = candidate.provider.name
        if await self.record_failure(candidate, failure, probe, seconds, log):
            self.health.observe(name, False, seconds)
        logger.warning("attempt on {} ({}) failed: {}", name, candidate.model, failure)
        if (
            isinstance(failure, UpstreamHTTPError)
            and failure.status in CLIENT_FAULT_STATUSES
            and not isinstance(failure, UpstreamContextLength | UpstreamContentPolicy)
        ):
            raise UpstreamRejected(
                f"{candidate.model} rejected the request: {failure.reason}"
            ) from failure
