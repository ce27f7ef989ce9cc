"""The external writer's routine passes run at idle CPU priority on a thread of their own; its
normal-priority thread steps in when they fall behind or stop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger.records import encode
from services.ledger.writer import CatchUp, LedgerWriter, oldest_waiting
from services.platform.idle_lane import IdleLane, idle_priority_available
from tests.ledger.test_ledger import count, request

pytestmark = pytest.mark.skipif(not idle_priority_available(), reason="Linux SCHED_IDLE")


def test_the_lane_runs_at_idle_priority_and_the_main_thread_keeps_its_own() -> None:
    seen: dict[str, int] = {}

    async def main(stop: asyncio.Event) -> None:
        seen["lane"] = os.sched_getscheduler(0)
        worker = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        worker.start()
        worker.join()
        await stop.wait()

    lane = IdleLane("test-lane")
    lane.start(main)
    assert lane.running and lane.idle
    assert lane.stop(10) and not lane.running
    assert seen == {"lane": os.SCHED_IDLE, "child": os.SCHED_IDLE}, "threads it starts inherit"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_lane_that_fails_reports_its_error_and_stops_running() -> None:
    async def main(stop: asyncio.Event) -> None:
        raise OSError("disk gone")

    lane = IdleLane("test-lane")
    lane.start(main)
    assert lane.stop(10) and not lane.running
    assert isinstance(lane.error, OSError)


def seal(wal: Path, name: str, first: int, waited: float, now: float) -> Path:
    path = wal / f"wal-{name}.jsonl.1.sealed"
    path.write_bytes(encode([request(first), request(first + 1)]))
    os.utime(path, (now - waited, now - waited))
    return path


async def test_files_waiting_longer_than_the_bound_are_taken_at_normal_priority(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A lane that keeps up is left alone; a file that waited past the bound (the lane starved)
    is ingested here, every file with it, and once caught up the lane is left alone again."""
    wal = tmp_path / "wal"
    wal.mkdir()
    now = time.time()
    seal(wal, "young", 1, waited=1.0, now=now)
    assert oldest_waiting(wal, now) == pytest.approx(1.0, abs=0.01)
    writer = LedgerWriter(engine, wal)
    catch_up = CatchUp(writer, wal, lane_running=lambda: True, behind_after=5.0,
                       clock=lambda: now)  # fmt: skip
    assert not await catch_up.step()
    assert writer.ingested == 0 and await count(engine) == 0, "the lane keeps up: not our work"

    seal(wal, "old", 3, waited=6.0, now=now)
    assert await catch_up.step() and catch_up.catching_up
    assert await count(engine) == 4 and list(wal.glob("wal-*")) == []
    assert oldest_waiting(wal, now) == 0.0
    assert not await catch_up.step() and not catch_up.catching_up


async def test_a_stopped_lane_is_replaced_at_once(engine: AsyncEngine, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    now = time.time()
    seal(wal, "young", 1, waited=0.5, now=now)
    writer = LedgerWriter(engine, wal)
    catch_up = CatchUp(writer, wal, lane_running=lambda: False, behind_after=5.0,
                       clock=lambda: now)  # fmt: skip
    assert await catch_up.step()
    assert await count(engine) == 2 and list(wal.glob("wal-*")) == []
