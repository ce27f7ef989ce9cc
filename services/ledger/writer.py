"""The external ledger writer (`python main.py ledger`, with `ledger.writer: external`).

API processes append records to their WAL files and seal them (services/ledger/wal.py); this process
inserts every sealed or orphaned file into the database and deletes it after the commit. Moving
the insert here took it off the request-serving processes: on a 2-core machine the inline flush
cost the API 10-20 % of its throughput (bench/RESULTS.md, issue 4).

It reports through a small JSON file next to the WAL files, `writer-status.json`, which the API
reads for `/health` (`last_flush_ms`, `last_db_write`, whether the writer is alive). Several
writers on one directory are harmless: each file is taken under an flock and inserts are
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db
from services.ledger.wal import DB_ERRORS, ingest_unowned

STATUS_FILE = "writer-status.json"


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """What the writer last did, as the API reads it."""

    pid: int
    heartbeat: float  # time.time() of the last pass
    interval_seconds: float
    db_ok: bool
    last_flush_ms: float | None = None
    last_db_write: str | None = None  # ISO 8601, UTC

    def alive(self, now: float) -> bool:
        """Passes are `interval_seconds` apart; three missed ones (or 10 s) mean it is gone."""
        return now - self.heartbeat <= max(3 * self.interval_seconds, 10.0)

    @property
    def last_db_write_at(self) -> datetime | None:
        return datetime.fromisoformat(self.last_db_write) if self.last_db_write else None


def read_status(wal_dir: Path) -> WriterStatus | None:
    """The writer's last report, or None when there is none (or it is unreadable)."""
    try:
        return WriterStatus(**orjson.loads((wal_dir / STATUS_FILE).read_bytes()))
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def write_status(wal_dir: Path, status: WriterStatus) -> None:
    """Replace the status file atomically (write aside, rename), so a reader never sees half."""
    target = wal_dir / STATUS_FILE
    aside = target.with_suffix(f".{os.getpid()}.tmp")
    aside.write_bytes(orjson.dumps(asdict(status)))
    os.replace(aside, target)


class LedgerWriter:
    """Ingests the WAL directory into the database every `interval` seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        wal_dir: Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._dir = wal_dir
        self._interval = interval
        self._clock = clock
        self.db_ok = True
        self.last_flush_ms: float | None = None
        self.last_db_write: datetime | None = None
        self.ingested = 0

    async def start(self) -> bool:
        """Create the directory and bring the schema to head (under the migration lock); False
        while the database cannot be reached."""
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            await ledger_db.migrate(self._engine, self._dir)
            self.last_db_write = await ledger_db.last_write(self._engine)
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
        """One pass over the directory; the records it added. A database failure leaves the
        files where they are for the next pass."""
        started = self._clock()
        try:
            read, added = await ingest_unowned(self._engine, self._dir, quiet=True)
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
            interval_seconds=self._interval,
            db_ok=self.db_ok,
            last_flush_ms=self.last_flush_ms,
            last_db_write=last.isoformat() if last else None,
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
                async with asyncio.timeout(self._interval):
                    await stop.wait()
        if started:
            await self.ingest_once()
        logger.info("ledger writer stopped ({} records ingested)", self.ingested)
