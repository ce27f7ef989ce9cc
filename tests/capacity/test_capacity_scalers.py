"""The process scaler with real replica processes and a fake clock for its backoff: a replica
that dies is replaced, one that never starts is given up on with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from services.capacity.scalers import ProcessScaler, ScalerStatus
from services.config import ScalerSettings
from tests.helpers import FakeClock


async def until_ready(scaler: ProcessScaler) -> ScalerStatus:
    """Poll the scaler until its replicas answer (a real cold start of a real process)."""
    for _ in range(400):
        status = await scaler.status()
        if status.ready:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("the replica never became ready")


async def test_a_replica_killed_while_warming_is_replaced_after_its_backoff(
    tmp_path: Path,
) -> None:
    """SIGKILL while the replica warms: it is dropped at once, a new one starts once the backoff
    has passed (not before), and the model becomes ready on it."""
    clock = FakeClock(0.0)
    settings = ScalerSettings(startup_seconds=0.5, restart_backoff_seconds=5)
    async with aiohttp.ClientSession() as http:
        scaler = ProcessScaler("large-model", settings, http, log_dir=tmp_path, clock=clock)
        try:
            await scaler.scale_to(1)
            first = scaler._procs[0]
            first.process.kill()
            await first.process.wait()
            status = await scaler.status()
            assert (status.wanted, status.replicas, status.ready) == (1, [], False)
            clock.now += 4.9
            await scaler.status()
            assert scaler._procs == [], "no replacement before the backoff"
            clock.now += 0.2
            await scaler.status()
            assert len(scaler._procs) == 1 and scaler._procs[0].port != first.port
            status = await until_ready(scaler)
            assert status.problem is None and status.ready_count == 1
        finally:
            await scaler.close()


async def test_a_replica_that_never_starts_is_given_up_with_the_reason(tmp_path: Path) -> None:
    """A command that exits at once: replaced `max_restarts` times with doubling waits, then the
    scaler gives up and says why (what /health shows under planner.models)."""
    clock = FakeClock(0.0)
    settings = ScalerSettings(command=["{python}", "-c", "raise SystemExit(3)"],
                              restart_backoff_seconds=1, max_restarts=2)  # fmt: skip
    async with aiohttp.ClientSession() as http:
        scaler = ProcessScaler("small-model", settings, http, log_dir=tmp_path, clock=clock)
        try:
            await scaler.scale_to(1)
            waits = []
            for _ in range(3):
                await scaler._procs[0].process.wait()
                before = clock.now
                status = await scaler.status()
                waits.append(scaler._next_start - before)
                clock.now = scaler._next_start
                status = await scaler.status()
            assert waits[:2] == [1.0, 2.0], "the wait doubles"
            assert status.problem == "gave up after 2 restarts: the last replica exited with code 3"
            assert scaler._procs == [] and status.wanted == 1 and not status.ready
            await scaler.scale_to(0)
            assert (await scaler.status()).problem is None, "a stop forgives"
        finally:
            await scaler.close()
