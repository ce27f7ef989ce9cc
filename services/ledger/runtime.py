"""The ledger as an API process runs it: the database engine, the WAL-backed buffer, the
provider registry written at start, health snapshots, and what `/health` says of them.

With an inline writer the process does all of this against the database itself. With an external
writer it does none of it: the writer migrates, registers the deployments and inserts both the
records and the health snapshots (services/ledger/handoff.py), so the database layer (SQLAlchemy
and its driver, about 22 MB) is loaded only when an operator's report first needs the engine.
Nothing on this path may import it at module level; tests/ledger/test_lazy_database.py checks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from services.config import Settings, redact_url
from services.ledger.handoff import read_status, write_health
from services.ledger.wal import Ledger
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


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

    def __init__(self, settings: Settings, engine: AsyncEngine | None, ledger: Ledger) -> None:
        self._settings = settings
        self._engine = engine
        self._wal_dir = Path(settings.ledger.wal_dir)
        self.ledger = ledger

    @property
    def engine(self) -> AsyncEngine:
        """The database, opened on first use: at start with an inline writer, at an operator's
        first report with an external one."""
        if self._engine is None:
            from services.ledger.db import make_engine

            self._engine = make_engine(self._settings.database.url)
        return self._engine

    @property
    def engine_open(self) -> bool:
        """Whether this process has loaded the database layer (tests, diagnostics)."""
        return self._engine is not None

    @classmethod
    async def open(cls, settings: Settings) -> LedgerRuntime:
        """Open the WAL first (requests can be recorded even if the database is down). With an
        inline writer, then the database (migrated to head): register the deployments, replay
        dead processes' WALs. With an external writer that is the writer's work."""
        inline = settings.ledger.writer != "external"  # auto alone: inline
        engine = None
        if inline:
            from services.ledger.db import make_engine

            engine = make_engine(settings.database.url)
        ledger = Ledger(
            engine,
            Path(settings.ledger.wal_dir),
            flush_interval=settings.ledger.flush_interval_seconds,
            batch_size=settings.ledger.batch_size,
            fsync=settings.ledger.fsync,
            writes_database=inline,
            max_pending=settings.ledger.max_pending_records,
            when_full=settings.ledger.when_full,
        )
        runtime = cls(settings, engine, ledger)
        ledger.start()
        if inline:
            await runtime._prepare_database()
        return runtime

    async def _prepare_database(self) -> None:
        from services.ledger import db as ledger_db

        settings, engine, ledger = self._settings, self.engine, self.ledger
        try:
            await ledger_db.migrate(engine, self._wal_dir)
            await ledger_db.sync_providers(engine, registry_rows(settings))
            replayed = await ledger.replay()
            ledger.last_db_write = ledger.last_db_write or await ledger_db.last_write(engine)
        except ledger_db.DB_ERRORS as exc:
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

    def state(self) -> LedgerState:
        """What `/health` and `/api/llm/health` say of the ledger.

        With an external writer the flush timings and the last write are the writer's, read
        from its status file."""
        ledger = self.ledger
        if ledger.writes_database:
            return LedgerState(ledger.pending, ledger.wal_size_bytes, ledger.last_flush_ms,
                               ledger.last_db_write, "inline", ledger.problem())  # fmt: skip
        status = read_status(self._wal_dir)
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
        """Store every deployment's breaker state and health window (for trends): in the
        database, or with an external writer in a file it inserts."""
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
        if not self.ledger.writes_database:
            try:
                write_health(self._wal_dir, rows)
            except OSError as exc:
                logger.warning("health snapshot not stored ({})", exc.strerror or exc)
            return
        from services.ledger import db as ledger_db

        try:
            await ledger_db.insert_health(self.engine, rows)
        except ledger_db.DB_ERRORS as exc:
            logger.warning("health snapshot not stored ({})", type(exc).__name__)

    async def disabled_deployments(self) -> set[str] | None:
        """The deployments the database records as switched off, to restore the switches to a
        Redis that lost them; None while that cannot be known. With an external writer they
        come from its report (no database work here), once it has made one."""
        if not self.ledger.writes_database:
            status = read_status(self._wal_dir)
            if status is None or not status.alive(time.time()) or status.disabled is None:
                return None
            return set(status.disabled)
        from services.ledger import db as ledger_db

        try:
            return await ledger_db.disabled_providers(self.engine)
        except ledger_db.DB_ERRORS:
            return None

    async def database_ok(self) -> bool:
        """Whether records reach the database. With an external writer that is the writer's
        finding on its last pass (it is the one writing), and false while no writer reports:
        the API does not ping the database itself, which would load the database layer."""
        if not self.ledger.writes_database:
            status = read_status(self._wal_dir)
            return status is not None and status.alive(time.time()) and status.db_ok
        from services.ledger import db as ledger_db

        return await ledger_db.ping(self.engine)

    @property
    def database_backend(self) -> str:
        """The database's kind as its URL names it (`sqlite`, `postgresql`), driver left out."""
        return self._settings.database.url.split(":", 1)[0].split("+", 1)[0]

    async def record_switch(self, name: str, enabled: bool) -> None:
        """Record an operator's switch in the database (the record that outlives Redis)."""
        from services.ledger import db as ledger_db

        await ledger_db.set_enabled(self.engine, name, enabled)

    async def close(self) -> None:
        """Flush what is buffered, then release the database if it was opened."""
        await self.ledger.close()
        if self._engine is not None:
            await self._engine.dispose()
