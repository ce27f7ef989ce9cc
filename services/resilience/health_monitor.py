"""The health monitor: passive statistics per deployment and active probes on a jittered interval.

Passive: every attempt's outcome and latency go into a sliding window (the last `window` calls),
from which `/circuit-breakers` and the admin views report success rate, latency percentiles and
the current failure streak. Deciding on failures seen in traffic is the breaker's job; the
monitor does not second-guess it from the same data.

Active: each deployment is probed (its free model-list endpoint, or the deployment's `probe:`
path) every `probe_interval_seconds` +/- 20 %, so probes from many processes do not arrive
together. After `unhealthy_after` failed probes in a row a deployment is unhealthy and the router
skips it, like an open breaker; the first successful probe makes it healthy again. Probing needs
no traffic, so a deployment that went quiet because it was skipped still comes back.

Passive beats active: a deployment whose real chat calls succeeded within the last two probe
intervals is not taken out by failing probes alone (a probe path can be broken on a server that
chats fine: `transformers serve` answers `/v1/models` with 500 when it has no hub cache). Its
breaker still judges the real calls.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from services.config import HealthSettings
from services.errors import UpstreamError, UpstreamTimeout
from services.providers.base import Provider


@dataclass
class DeploymentHealth:
    """What the monitor knows about one deployment."""

    window: deque[tuple[bool, float]]
    consecutive_failures: int = 0
    probe_failures: int = 0
    last_probe_ok: bool | None = None
    last_probe_at: float | None = None
    last_probe_error: str | None = None
    next_probe_at: float = 0.0
    healthy: bool = True
    last_success_at: float | None = None  # of a real call
    probe_overruled: bool = False  # probes fail, real calls succeed (logged once)

    def summary(self) -> dict[str, Any]:
        """Success rate, latency percentiles (ms, successful calls) and probe results."""
        calls = list(self.window)
        latencies = sorted(ms for ok, ms in calls if ok)
        return {
            "healthy": self.healthy,
            "samples": len(calls),
            "success_rate": round(sum(ok for ok, _ in calls) / len(calls), 4) if calls else None,
            "latency_ms": _percentiles(latencies),
            "consecutive_failures": self.consecutive_failures,
            "probe_failures": self.probe_failures,
            "last_probe_ok": self.last_probe_ok,
            "last_probe_error": self.last_probe_error,
        }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    if len(values) == 1:
        return {"p50": round(values[0], 2), "p95": round(values[0], 2), "p99": round(values[0], 2)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2)}


class HealthMonitor:
    """Passive windows and active probes for a set of deployments."""

    def __init__(
        self,
        settings: HealthSettings,
        providers: Mapping[str, Provider],
        *,
        probed: set[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._providers = dict(providers)
        self._probed = set(self._providers) if probed is None else probed & set(self._providers)
        self._clock = clock
        self._rng = rng or random.Random()
        self._health = {
            name: DeploymentHealth(window=deque(maxlen=settings.window)) for name in providers
        }
        # Told when a deployment's verdict flips: (name, healthy, the failing probe's error).
        self.on_change: Callable[[str, bool, str | None], None] | None = None

    def add(self, name: str, provider: Provider, *, probed: bool) -> None:
        """A deployment that appeared at run time (a capacity-planner replica)."""
        if name not in self._health:
            self._providers[name] = provider
            self._health[name] = DeploymentHealth(window=deque(maxlen=self._settings.window))
            if probed:
                self._probed.add(name)

    def healthy(self, name: str) -> bool:
        """Whether the router may use the deployment (false only after failed probes)."""
        return self._health[name].healthy

    def observe(self, name: str, ok: bool, seconds: float) -> None:
        """One attempt's outcome, from real traffic."""
        health = self._health[name]
        health.window.append((ok, seconds * 1000))
        health.consecutive_failures = 0 if ok else health.consecutive_failures + 1
        if ok:
            health.last_success_at = self._clock()

    def summary(self, name: str) -> dict[str, Any]:
        """The deployment's stats for the admin views."""
        return self._health[name].summary()

    def next_interval(self) -> float:
        """The probe interval, jittered by +/- 20 %."""
        return self._settings.probe_interval_seconds * self._rng.uniform(0.8, 1.2)

    async def probe(self, name: str) -> bool:
        """Probe one deployment now and update its verdict."""
        health = self._health[name]
        limit = self._settings.probe_timeout_seconds
        try:
            try:
                async with asyncio.timeout(limit):
                    await self._providers[name].probe()
            except TimeoutError as exc:
                raise UpstreamTimeout(name, f"no answer within {limit:g}s") from exc
        except UpstreamError as exc:
            health.last_probe_ok, health.last_probe_error = False, exc.detail
            health.probe_failures += 1
            if self._chats_fine(health):
                if not health.probe_overruled:
                    health.probe_overruled = True
                    logger.warning("deployment {}: its probe fails ({}) but chat calls succeed; "
                                   "kept in routing (set `probe:` for this server)", name,
                                   exc.detail)  # fmt: skip
            elif health.healthy and health.probe_failures >= self._settings.unhealthy_after:
                health.healthy = False
                logger.warning("deployment {} is unhealthy: {} probes failed ({})", name,
                               health.probe_failures, exc.detail)  # fmt: skip
                if self.on_change is not None:
                    self.on_change(name, False, exc.detail)
        else:
            health.last_probe_ok, health.last_probe_error = True, None
            health.probe_failures = 0
            health.probe_overruled = False
            if not health.healthy:
                health.healthy = True
                logger.info("deployment {} is healthy again", name)
                if self.on_change is not None:
                    self.on_change(name, True, None)
        health.last_probe_at = self._clock()
        health.next_probe_at = health.last_probe_at + self.next_interval()
        return health.last_probe_ok

    def _chats_fine(self, health: DeploymentHealth) -> bool:
        recent = 2 * self._settings.probe_interval_seconds
        return health.last_success_at is not None and (
            self._clock() - health.last_success_at <= recent
        )

    async def probe_due(self) -> None:
        """Probe, concurrently, every deployment whose next probe time has come."""
        now = self._clock()
        due = [n for n in self._probed if self._health[n].next_probe_at <= now]
        await asyncio.gather(*(self.probe(name) for name in due))

    async def run(self) -> None:
        """Probe on jittered intervals while the process runs."""
        if not self._settings.enabled or not self._probed:
            return
        for health in self._health.values():
            health.next_probe_at = self._clock() + self._rng.uniform(0, 1) * self.next_interval()
        while True:
            await self.probe_due()
            soonest = min(self._health[n].next_probe_at for n in self._probed)
            await asyncio.sleep(max(0.05, soonest - self._clock()))
