"""The capacity planner process (`python main.py capacity`): observe, decide, act, publish.

Every `capacity.interval_seconds`:

1. take (or renew) the planner lock in Redis; without it, stand by (another planner acts);
2. observe: the API log's growth, the request rate, in-flight requests and the small model's
   traffic from the counters the API publishes, and each scaler's replicas and readiness;
3. `capacity_policy.decide` (pure) returns the next state, the scaler actions and the reasons;
4. carry out the actions, log every reason to `.logs/capacity_planning.log`;
5. publish the state to Redis (with a TTL: the heartbeat the API relies on).

On shutdown the planner drains what it started: its replicas leave routing, and after
`drain_seconds` they are stopped, so no request is cut off by the planner going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from loguru import logger

from services.alerts.events import Alert
from services.alerts.sender import AlertSender
from services.capacity.kubernetes import KubernetesScaler
from services.capacity.policy import (
    ROLES,
    STOPPING,
    Action,
    Decision,
    ModelStatus,
    Observation,
    PlannerState,
    Policy,
    Role,
    decide,
    initial_state,
)
from services.capacity.scalers import ProcessScaler, Scaler, ScalerStatus, SimulatedScaler
from services.capacity.signals import LogSample, log_growth, rate, sample_log
from services.capacity.state import (
    TIMELINE_LENGTH,
    PlannerLock,
    PublishedModel,
    PublishedState,
    keys,
    publish,
    read_load,
)
from services.config import CapacitySettings, ScalerSettings, Settings
from services.platform.redis_gate import REDIS_ERRORS


def build_scaler(
    model: str, scaler: ScalerSettings, http: aiohttp.ClientSession, log_dir: Path
) -> Scaler:
    """The configured scaler of one model."""
    if scaler.kind == "simulated":
        return SimulatedScaler(model, scaler)
    if scaler.kind == "kubernetes":
        return KubernetesScaler(model, scaler, http)
    return ProcessScaler(model, scaler, http, log_dir=log_dir)


def policy_of(capacity: CapacitySettings) -> Policy:
    return Policy(
        initial_threshold=float(
            capacity.log_threshold_bytes
            if capacity.signal == "log_growth"
            else capacity.request_rate_threshold
        ),
        up_ticks=capacity.scale_up_ticks,
        down_ticks=capacity.scale_down_ticks,
        quiet_window=capacity.quiet_window_seconds,
        drain_seconds=capacity.drain_seconds,
        large_max_replicas=capacity.large.scaler.max_replicas,
        small_max_replicas=capacity.small.scaler.max_replicas,
    )


class CapacityPlanner:
    """One planner process's loop; scalers and clock injected."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        scalers: Mapping[Role, Scaler],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        alerts: AlertSender | None = None,
    ) -> None:
        self._settings = settings
        self._alerts = alerts
        self._capacity = settings.capacity
        self._redis = redis
        self._scalers = dict(scalers)
        self._clock = clock
        self._wall = wall_clock
        self._prefix = settings.redis.key_prefix
        self.policy = policy_of(self._capacity)
        self.state: PlannerState = initial_state(self.policy, clock())
        self.lock = PlannerLock(redis, self._prefix, self._capacity.state_ttl_seconds)
        self.acting = False
        self._log_path = Path(self._capacity.log_file or Path(settings.log.dir) / "api_server.log")
        self._log_sample: LogSample | None = None
        self._requests: int | None = None
        self._small_served: int | None = None
        self._last_tick: float | None = None
        self._statuses: dict[Role, ScalerStatus] = {}
        self.observed: dict[str, float] = {}
        self._events: list[str] = []  # for the timeline, sent with the next published state

    @property
    def models(self) -> dict[Role, str]:
        return {"large": self._capacity.large.model, "small": self._capacity.small.model}

    async def tick(self) -> Decision | None:
        """One round; None when another planner holds the lock (or Redis is unreachable)."""
        try:
            holding = await self.lock.hold()
        except REDIS_ERRORS as exc:
            logger.warning("Redis unreachable ({}): no decisions until it answers",
                           type(exc).__name__)  # fmt: skip
            return None
        if not holding:
            if self.acting:
                logger.warning("lost the planner lock: standing by")
            elif self._last_tick is None:
                logger.info("another planner holds the lock: standing by")
            self.acting = False
            self._last_tick = self._clock()
            return None
        if not self.acting:
            logger.info("acting as the capacity planner ({})", self.lock.owner)
            self.acting = True
        now = self._clock()
        observation = await self.observe(now)
        decision = decide(self.state, observation, now, self.policy)
        for reason in decision.reasons:
            logger.info(reason)
            self._events.append(reason)
        logger.debug(
            "tick: log growth {:.0f} B, {:.1f} requests/s, {:.0f} in flight, threshold {:.0f} "
            "({}), up {}/{} down {}/{}",
            self.observed["log_growth_bytes"], self.observed["request_rate"],
            self.observed["inflight"], decision.state.threshold, self._capacity.signal,
            decision.state.above, self.policy.up_ticks, decision.state.below,
            self.policy.down_ticks,
        )  # fmt: skip
        self.state = decision.state
        for action in decision.actions:
            await self._act(action)
        await self._publish()
        return decision

    async def observe(self, now: float) -> Observation:
        """The signals and the scalers' view, as of now."""
        elapsed = now - self._last_tick if self._last_tick is not None else 0.0
        self._last_tick = now
        previous = self._log_sample
        sample = await asyncio.to_thread(
            sample_log, self._log_path, previous.inode if previous else None
        )
        growth = log_growth(previous, sample)
        self._log_sample = sample
        load = await read_load(self._redis, self._prefix, now=self._wall(),
                               stale_after=3 * self._capacity.interval_seconds)  # fmt: skip
        request_rate = rate(self._requests, load.requests, elapsed)
        small_total = load.served.get(self.models["small"], 0)
        small_requests = (
            small_total - self._small_served
            if self._small_served is not None and small_total >= self._small_served
            else 0
        )
        self._requests, self._small_served = load.requests, small_total
        for role in ROLES:
            self._statuses[role] = await self._status(role)
        self.observed = {
            "log_growth_bytes": float(growth),
            "request_rate": round(request_rate, 3),
            "inflight": float(load.inflight),
            "small_requests": float(small_requests),
        }
        signal = growth if self._capacity.signal == "log_growth" else request_rate
        return Observation(
            signal=float(signal),
            small_requests=small_requests,
            large_ready=self._statuses["large"].ready,
            small_ready=self._statuses["small"].ready,
        )

    async def _status(self, role: Role) -> ScalerStatus:
        try:
            return await self._scalers[role].status()
        except Exception as exc:  # noqa: BLE001 - a scaler's failure must not stop the planner
            logger.error("{} scaler status failed: {}", role, exc)
            return self._statuses.get(role) or ScalerStatus([], 0, 0)

    async def _act(self, action: Action) -> None:
        model = self.models[action.role]
        event = f"scaling {model} ({action.role} model) to {action.replicas} planner replicas"
        logger.info(event)
        self._events.append(event)
        if self._alerts is not None:
            self._alerts.emit(Alert("planner.scale", model, event, {
                "role": action.role, "replicas": action.replicas, "signal": self.observed,
                "threshold": self.state.threshold}))  # fmt: skip
        try:
            await self._scalers[action.role].scale_to(action.replicas)
        except Exception as exc:  # noqa: BLE001 - logged; the next ticks retry via the state
            logger.error("scaling {} to {} failed: {}", model, action.replicas, exc)
            self._events.append(f"scaling {model} to {action.replicas} failed: {exc}")
            return
        self._statuses[action.role] = await self._status(action.role)

    def published(self) -> PublishedState:
        """The state as the API reads it."""
        selector = {"large": self._capacity.large.session_selector,
                    "small": self._capacity.small.session_selector}  # fmt: skip
        models = {}
        for role in ROLES:
            status = self._statuses.get(role) or ScalerStatus([], 0, 0)
            models[self.models[role]] = PublishedModel(
                role, self.state.model(role).state, list(status.replicas), status.problem
            )
        return PublishedState(
            planner=self.lock.owner,
            updated=self._wall(),
            target_selector=selector[self.state.target],
            target_role=self.state.target,
            threshold=self.state.threshold,
            signal=self._capacity.signal,
            observed=self.observed,
            models=models,
        )

    async def _publish(self) -> None:
        events = self._events[-TIMELINE_LENGTH:]
        try:
            await publish(self._redis, self._prefix, self.published(),
                          self._capacity.state_ttl_seconds, events)  # fmt: skip
        except REDIS_ERRORS as exc:
            logger.warning("could not publish the planner state ({})", type(exc).__name__)
            self._events = events  # kept for the next tick's try
            return
        self._events = []

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every interval until `stop`, then drain and stop what this planner started."""
        while not stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._capacity.interval_seconds):
                    await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Replicas leave routing first (published as stopping), then are stopped."""
        running = [r for r in ROLES if self.state.model(r).replicas > 0]
        if self.acting and running:
            now = self._clock()
            large, small = (
                ModelStatus(STOPPING, m.replicas, now) if m.replicas > 0 else m
                for m in (self.state.large, self.state.small)
            )
            self.state = replace(self.state, large=large, small=small, target="large")
            names = ", ".join(self.models[r] for r in running)
            logger.info("shutting down: draining {} for {:.0f}s before stopping them", names,
                        self.policy.drain_seconds)  # fmt: skip
            await self._publish()
            await asyncio.sleep(self.policy.drain_seconds)  # the API processes' sync catches up
        for role in ROLES:
            try:
                if self.acting and self.state.model(role).replicas > 0:
                    await self._scalers[role].scale_to(0)
                await self._scalers[role].close()
            except Exception as exc:  # noqa: BLE001 - stop the others regardless
                logger.error("stopping the {} model's replicas failed: {}", role, exc)
        if self.acting:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.delete(keys(self._prefix)["state"])
                await self.lock.release()
        logger.info("capacity planner stopped")
