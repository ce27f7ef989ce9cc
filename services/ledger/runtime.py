"""The ledger as an API process runs it: the database engine, the WAL-backed buffer, the
provider registry written at start, health snapshots, and what `/health` says of them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.config import Settings, redact_url
from services.ledger import db as ledger_db
from services.ledger.db import make_engine
from services.ledger.wal import DB_ERRORS, Ledger
from services.ledger.writer import read_status
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The ledger as the health endpoints report it."""

    buffer_len: int
    wal_size_bytes: int
    last_flush_ms: float | None
    last_db_write: datetime | None
    writer: str  # inline | running | missing (an external writer's heartbeat is stale)
    problem: str | None  # what keeps the ledger from being healthy (None: nothing)

    @property
    def ok(self) -> bool:
        """Healthy: nothing waits in memory only, the WAL and the database take records."""
        return self.problem is None


def registry_rows(settings: Settings) -> list[dict[str, Any]]:
    """The configured deployments as rows of the provider registry."""
    rows = []
    for priority, (model, name, deployment) in enumerate(settings.deployments()):
        policy = settings.breaker_policy(deployment)
        rows.append(
            {
                "name": name,
                "model": model,
                "kind": deployment.provider,
                "priority": priority,
                "local": settings.models[model].local,
                "breaker": policy.model_dump(),
            }
        )
    return rows


class LedgerRuntime:
    """The engine and the ledger of one API process, opened together."""

    def __init__(self, settings: Settings, engine: AsyncEngine, ledger: Ledger) -> None:
        self._settings = settings
        self.engine = engine
        self.ledger = ledger

    @classmethod
    async def open(cls, settings: Settings) -> LedgerRuntime:
        """Open the WAL first (requests can be recorded even if the database is down), then the
        database (migrated to head): register the deployments, replay dead processes' WALs."""
        engine = make_engine(settings.database.url)
        wal_dir = Path(settings.ledger.wal_dir)
        ledger = Ledger(
            engine,
            wal_dir,
            flush_interval=settings.ledger.flush_interval_seconds,
            batch_size=settings.ledger.batch_size,
            fsync=settings.ledger.fsync,
            writes_database=settings.ledger.writer != "external",  # auto alone: inline
            max_pending=settings.ledger.max_pending_records,
            when_full=settings.ledger.when_full,
        )
        ledger.start()
        try:
            await ledger_db.migrate(engine, wal_dir)
            await ledger_db.sync_providers(engine, registry_rows(settings))
            replayed = await ledger.replay()
            ledger.last_db_write = ledger.last_db_write or await ledger_db.last_write(engine)
        except DB_ERRORS as exc:
            ledger.db_ok = False
            logger.error(
                "ledger database unavailable at start ({}): records wait in the WAL",
                type(exc).__name__,
            )
        else:
            logger.info(
                "ledger ready at {} ({} records replayed)",
                redact_url(settings.database.url),
                replayed,
            )
        return cls(settings, engine, ledger)

    def state(self) -> LedgerState:
        """What `/health` and `/api/llm/health` say of the ledger.

        With an external writer the flush timings and the last write are the writer's, read
        from its status file."""
        ledger = self.ledger
        if ledger.writes_database:
            return LedgerState(ledger.pending, ledger.wal_size_bytes, ledger.last_flush_ms,
                               ledger.last_db_write, "inline", ledger.problem())  # fmt: skip
        status = read_status(Path(self._settings.ledger.wal_dir))
        alive = status is not None and status.alive(time.time())
        return LedgerState(
            ledger.pending,
            ledger.wal_size_bytes,
            status.last_flush_ms if status else None,
            (status.last_db_write_at if status else None) or ledger.last_db_write,
            "running" if alive else "missing",
            ledger.problem() or (None if alive else "the external ledger writer is not running"),
        )

    async def snapshot_health(self, breakers: BreakerStore, health: HealthMonitor) -> None:
        """Store every deployment's breaker state and health window (for trends)."""
        now = datetime.now(UTC)
        rows = []
        for name in breakers.names:
            summary = health.summary(name)
            latency = summary["latency_ms"] or {}
            rows.append(
                {
                    "ts": now,
                    "deployment": name,
                    "breaker_state": breakers.state(name).state,
                    "healthy": summary["healthy"],
                    "success_rate": summary["success_rate"],
                    "p50_ms": latency.get("p50"),
                    "p95_ms": latency.get("p95"),
                }
            )
        try:
            await ledger_db.insert_health(self.engine, rows)
        except DB_ERRORS as exc:
            logger.warning("health snapshot not stored ({})", type(exc).__name__)

    async def close(self) -> None:
        """Flush what is buffered, then release the database."""
        await self.ledger.close()
        await self.engine.dispose()
