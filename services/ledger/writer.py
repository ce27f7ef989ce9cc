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
        self._engine = engine
        self._dir = wal_dir
        self._registry = registry  # the configured deployments (services/ledger/runtime.py)
        self._disabled: list[str] | None = None
        self._interval = interval
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
            await ledger_db.migrate(self._engine, self._dir)
            if self._registry:
                await ledger_db.sync_providers(self._engine, self._registry)
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
        """One pass over the directory (WAL files, then health snapshots) and a fresh read of
        the operator switches; the records it added. A database failure leaves the files where
        they are for the next pass."""
        started = self._clock()
        try:
            read, added = await ingest_unowned(self._engine, self._dir, quiet=True)
            await ingest_health(self._engine, self._dir)
            self._disabled = sorted(await ledger_db.disabled_providers(self._engine))
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
                async with asyncio.timeout(self._interval):
                    await stop.wait()
        if started:
            await self.ingest_once()
        logger.info("ledger writer stopped ({} records ingested)", self.ingested)
