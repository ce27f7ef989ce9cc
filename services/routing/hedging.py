"""Hedged first attempts (a chain's `hedge` policy): when a deployment has produced no first token
after the hedge delay, the next usable deployment is started too, and the first to produce content
wins; the other is cancelled, its stream closed and its breaker permit returned.

The delay is fixed (`after_seconds`) or adaptive: the deployment's own observed p95 time to first
token, kept within [after_seconds, max_after_seconds]."""

from __future__ import annotations

import asyncio
from collections import deque

from services.config import HedgeSettings
from services.errors import UpstreamError
from services.providers.base import Json
from services.resilience.breaker import Admission
from services.resilience.health_monitor import HealthMonitor
from services.routing.deployment_gate import DeploymentGate
from services.routing.outcomes import Attempt, Opened, Walk
from services.routing.router import Candidate


def hedge_delay(health: HealthMonitor, name: str, hedge: HedgeSettings) -> float:
    """How long `name` may go without a first token before a hedge starts."""
    if not hedge.adaptive:
        return hedge.after_seconds
    latency = health.summary(name)["latency_ms"]
    p95 = latency["p95"] / 1000 if latency else hedge.after_seconds
    return min(max(p95, hedge.after_seconds), hedge.max_after_seconds)


async def hedged_open(
    gate: DeploymentGate,
    candidate: Candidate,
    probe: bool,
    request: Json,
    hedge: HedgeSettings,
    plan: deque[Candidate],
    walk: Walk,
    limit: float | None,
) -> tuple[Opened, Candidate, bool]:
    """Open `candidate`; if it has no first token after the hedge delay, race it against the next
    usable deployment of `plan`. Answers the winner (and its probe flag); the loser is cancelled
    and logged as such, a failed racer is recorded as a failure. When both fail, the first one's
    failure is raised (the walk records it)."""
    name = candidate.provider.name
    remaining = walk.deadline - gate.clock()
    first = asyncio.create_task(
        gate.open(candidate, request, min(gate.ttft_seconds(name), remaining), limit)
    )
    done, _ = await asyncio.wait({first}, timeout=hedge_delay(gate.health, name, hedge))
    backup = next((c for c in plan if gate.usable(c.provider.name)), None)
    if done or backup is None or not gate.budget.try_withdraw():
        return await first, candidate, probe
    backup_name = backup.provider.name
    admission = await gate.admit(backup_name)
    if admission is Admission.REJECT:
        return await first, candidate, probe
    backup_probe = admission is Admission.PROBE
    walk.attempts += 1
    gate.stats.count("hedges")
    started = gate.clock()
    remaining = walk.deadline - gate.clock()
    second = asyncio.create_task(
        gate.open(backup, request, min(gate.ttft_seconds(backup_name), remaining), limit)
    )
    racers = {first: (candidate, probe), second: (backup, backup_probe)}
    pending = set(racers)
    errors: dict[asyncio.Task[Opened], UpstreamError] = {}
    try:
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                exc = task.exception()
                if exc is None:
                    winner, winner_probe = racers[task]
                    for loser in pending:
                        await cancel_racer(gate, loser, *racers[loser], started, walk)
                    pending = set()
                    if winner is backup:
                        plan.remove(backup)  # tried: not again later in this walk
                        if first in errors:  # the walk sees a success: record it here
                            elapsed = gate.clock() - started
                            walk.failures.append(errors[first])
                            await gate.failed(candidate, errors[first], probe, elapsed, walk.log)
                    return task.result(), winner, winner_probe
                if not isinstance(exc, UpstreamError):
                    raise exc
                errors[task] = exc
                if task is second:  # the first racer's failure is the walk's to record
                    walk.failures.append(exc)
                    elapsed = gate.clock() - started
                    await gate.failed(backup, exc, backup_probe, elapsed, walk.log)
                    plan.remove(backup)
    finally:
        for task in pending:
            task.cancel()
    raise errors[first]


async def cancel_racer(
    gate: DeploymentGate,
    task: asyncio.Task[Opened],
    candidate: Candidate,
    probe: bool,
    started: float,
    walk: Walk,
) -> None:
    """Stop the racer that lost: its stream closed, its breaker permit returned, its attempt
    logged as cancelled."""
    task.cancel()
    try:
        opened = await task
    except (asyncio.CancelledError, UpstreamError):
        pass
    else:  # it finished in the same instant: give its connection back
        await opened.stream.aclose()
    name = candidate.provider.name
    await gate.release(name, probe)
    walk.log.append(Attempt(name, candidate.model, False, gate.clock() - started, 0,
                            "HedgeCancelled", False, cancelled=True))  # fmt: skip
