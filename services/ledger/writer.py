"""The external ledger writer (`python main.py ledger`, with `ledger.writer: external`).

API processes append records to their WAL files and seal them (services/ledger/wal.py); this process
inserts every sealed or orphaned file into the database and deletes it after the commit. Moving
the insert here took it off the request-serving processes: on a 2-core machine the inline flush
cost the API 10-20 % of its throughput (bench/RESULTS.md, issue 4).

It also does the rest of the database work an inline API process would do for itself, so that an
API process with an external writer never loads the database layer while it serves traffic: it
migrates the schema, registers the configured deployments, inserts the health snapshots the API
processes leave next to their WAL files, and reports in `writer-status.json` (which the API reads
for `/health`) which deployments the database records as switched off (services/ledger/handoff.py).
Several writers on one directory are harmless: each WAL file is taken under an flock and inserts
are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db
from services.ledger.db import DB_ERRORS
from services.ledger.handoff import WriterStatus, read_status, write_status
from services.ledger.ingest import ingest_health, ingest_unowned
from services.ledger.wal import SEALED

__all__ = ["LedgerWriter", "WriterStatus", "read_status"]


class LedgerWriter:
    """Ingests the WAL directory into the database every `interval` seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        wal_dir: Path,
        *,
        interval: float = 1.0,
        registry: Sequence[dict[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._dir = wal_dir
        self._registry = registry  # the configured deployments (services/ledger/runtime.py)
        self._disabled: list[str] | None = None
        self.interval = interval
        self._clock = clock
        self.db_ok = True
        self.last_flush_ms: float | None = None
        self.last_db_write: datetime | None = None
        self.ingested = 0

    async def start(self) -> bool:
        """Create the directory, bring the schema to head (under the migration lock) and register
        the configured deployments; False while the database cannot be reached."""
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            await ledger_db.migrate(self.engine, self._dir)
            if self._registry:
                await ledger_db.sync_providers(self.engine, self._registry)
            self.last_db_write = await ledger_db.last_write(self.engine)
        except DB_ERRORS as exc:
            if self.db_ok:
                logger.error("ledger writer: database unavailable at start ({}); retrying",
                             type(exc).__name__)  # fmt: skip
            self.db_ok = False
            write_status(self._dir, self.status())
            return False
        self.db_ok = True
        return True

    async def ingest_once(self) -> int:
        """One pass over the directory (WAL files, then health snapshots) and a fresh read of
        the operator switches; the records it added. A database failure leaves the files where
        they are for the next pass."""
        started = self._clock()
        try:
            read, added = await ingest_unowned(self.engine, self._dir, quiet=True)
            await ingest_health(self.engine, self._dir)
            self._disabled = sorted(await ledger_db.disabled_providers(self.engine))
        except DB_ERRORS as exc:
            if self.db_ok:
                logger.error("ledger writer: database write failed ({}); files kept, retrying",
                             type(exc).__name__)  # fmt: skip
            self.db_ok = False
            read = added = 0
        else:
            if not self.db_ok:
                logger.info("ledger writer: database writes work again")
            self.db_ok = True
            if read:
                self.last_flush_ms = round((self._clock() - started) * 1000, 1)
                self.last_db_write = datetime.now(UTC)
                self.ingested += read
        write_status(self._dir, self.status())
        return added

    def status(self) -> WriterStatus:
        last = self.last_db_write
        return WriterStatus(
            pid=os.getpid(),
            heartbeat=time.time(),
            interval_seconds=self.interval,
            db_ok=self.db_ok,
            last_flush_ms=self.last_flush_ms,
            last_db_write=last.isoformat() if last else None,
            disabled=self._disabled,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest every interval until `stop`, then once more: the API processes seal their last
        files as they shut down, and those should not wait for the next start."""
        started = False
        while not stop.is_set():
            started = started or await self.start()
            if started:
                await self.ingest_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
        if started:
            await self.ingest_once()
        logger.info("ledger writer stopped ({} records ingested)", self.ingested)


def oldest_waiting(wal_dir: Path, now: float) -> float:
    """Seconds the oldest sealed WAL file has waited for a writer (0 when none waits)."""
    oldest = now
    for path in wal_dir.glob("wal-*" + SEALED):
        with contextlib.suppress(OSError):  # taken by a writer meanwhile
            oldest = min(oldest, path.stat().st_mtime)
    return max(0.0, now - oldest)


class CatchUp:
    """The normal-priority side of a writer whose routine passes run at idle priority
    (services/platform/idle_lane.py): when the oldest sealed file has waited more than
    `behind_after` seconds (the machine is too busy to leave the idle lane any CPU), or the
    lane has stopped, it makes the pass itself. Two passes at once are safe: each file is taken
    under an flock, and inserts are idempotent."""

    def __init__(
        self,
        writer: LedgerWriter,
        wal_dir: Path,
        *,
        lane_running: Callable[[], bool],
        behind_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._dir = wal_dir
        self._lane_running = lane_running
        self._behind_after = behind_after
        self._clock = clock
        self._started = False
        self.catching_up = False

    async def step(self) -> bool:
        """Look once, and make a pass if the lane is behind; whether it was."""
        waited = oldest_waiting(self._dir, self._clock())
        behind = waited > self._behind_after or not self._lane_running()
        if behind != self.catching_up:
            if behind:
                logger.warning("ledger writer: behind at idle priority (oldest file waited {:.0f} "
                               "s); catching up at normal priority", waited)  # fmt: skip
            else:
                logger.info("ledger writer: caught up; back to idle priority")
            self.catching_up = behind
        if behind:
            self._started = self._started or await self._writer.start()
            if self._started:
                await self._writer.ingest_once()
        return behind

    async def run(self, stop: asyncio.Event) -> None:
        """A step every interval until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._writer.interval):
                    await stop.wait()
            if not stop.is_set():
                await self.step()
