"""With an external writer an API process serves traffic without loading the database layer: the
writer migrates, registers deployments, inserts records and health snapshots, and reports the
operator switches; the API opens the database only for an operator's report."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.config import Settings
from services.ledger import db as ledger_db
from services.ledger.handoff import WriterStatus, read_status, write_health, write_status
from services.ledger.runtime import LedgerRuntime, registry_rows
from services.ledger.switches import RESTORED, OperatorSwitches
from services.ledger.writer import LedgerWriter
from services.platform.redis_connection import async_client, free_port
from services.platform.redis_gate import RedisGate
from tests.helpers import SimProcess, api_process, http, single_model_config, wait_until
from tests.ledger.test_ledger_crash import ledger_writer_process, ledger_writer_state


def loads_sqlalchemy(pid: int) -> bool:
    """Whether a process has SQLAlchemy loaded: its compiled extensions are mapped then."""
    return "/sqlalchemy/" in Path(f"/proc/{pid}/maps").read_text()


def table_count(database_url: str, table: sa.Table) -> int:
    async def read() -> int:
        engine = ledger_db.make_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = sa.select(sa.func.count()).select_from(table)
                return int((await conn.execute(query)).scalar() or 0)
        except ledger_db.DB_ERRORS:
            return 0  # not migrated yet
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_an_api_process_serves_and_snapshots_without_the_database_layer(
    redis_url: str, database_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """`main.py api` with `main.py ledger`: chat turns, /health and health snapshots all work,
    the writer puts records and snapshots in the database, and the API process has not loaded
    SQLAlchemy until an operator asks for a report, which then answers from the database."""
    config = single_model_config(
        tmp_path, redis_url, primary,
        ledger={"writer": "external", "flush_interval_seconds": 0.2,
                "health_snapshot_seconds": 0.2},
        resilience={"health": {"enabled": False}, "sync_interval_seconds": 0.1},
    )  # fmt: skip
    env = {"FR_DATABASE_URL": database_url, "FR_LEDGER_WAL_DIR": str(tmp_path / "wal")}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = api_process(config, env, port)
    writer = ledger_writer_process(config, env)
    try:
        wait_until(lambda: ledger_writer_state(base) == "running", timeout=30, what="writer")
        turn = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):
            assert http("POST", base + "/v1/chat/completions", turn)[0] == 200
        status, _, body = http("GET", base + "/health")
        assert status == 200 and json.loads(body)["db_ok"] is True
        assert http("GET", base + "/api/llm/health")[0] == 200
        wait_until(lambda: table_count(database_url, ledger_db.records) >= 20, what="records")
        wait_until(lambda: table_count(database_url, ledger_db.health_snapshots) >= 2,
                   what="health snapshots")  # fmt: skip
        assert table_count(database_url, ledger_db.providers) == 1, "the writer registers"
        first_snapshot = list((tmp_path / "wal").glob(f"health-{api.pid}-*-0.json"))
        assert first_snapshot == [], "a snapshot is deleted once stored"
        assert not loads_sqlalchemy(api.pid), "the API process loaded the database layer"

        status, _, body = http("GET", base + "/api/llm/costs?days=1")
        assert status == 200 and json.loads(body)["total_requests"] >= 20
        assert loads_sqlalchemy(api.pid), "a report opens the database"
    finally:
        for proc in (api, writer):
            proc.terminate()
            proc.wait(20)


async def test_the_writer_stores_the_snapshots_an_api_process_leaves(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A snapshot file is inserted and deleted; an unreadable one is deleted, not retried."""
    wal = tmp_path / "wal"
    wal.mkdir()
    row = {"ts": "2026-11-24T01:00:00+00:00", "deployment": "m:0", "breaker_state": "closed",
           "healthy": True, "success_rate": 1.0, "p50_ms": 3.0, "p95_ms": 9.0}  # fmt: skip
    (wal / "health-1-0.json").write_text(json.dumps([row, {**row, "deployment": "m:1"}]))
    (wal / "health-1-1.json").write_text("{not json")
    (wal / "health-1-2.json").write_text(json.dumps([{"deployment": "no timestamp"}]))
    writer = LedgerWriter(engine, wal, interval=1.0)
    assert await writer.start()
    await writer.ingest_once()
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(ledger_db.health_snapshots))).mappings().all()
    assert sorted(r["deployment"] for r in stored) == ["m:0", "m:1"]
    assert stored[0]["p95_ms"] == 9.0 and stored[0]["breaker_state"] == "closed"
    assert list(wal.glob("health-*")) == []


async def test_the_writer_registers_deployments_and_reports_the_switches(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    settings = Settings.model_validate({
        "models": {"m": {"deployments": [
            {"provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "x"},
            {"provider": "openai", "base_url": "http://127.0.0.1:2/v1", "model": "y"},
        ]}},
        "sessions": {"default_selector": "m"},
    })  # fmt: skip
    wal = tmp_path / "wal"
    writer = LedgerWriter(engine, wal, registry=registry_rows(settings))
    assert await writer.start()
    assert [r["name"] for r in await ledger_db.provider_rows(engine)] == ["m:0", "m:1"]
    await writer.ingest_once()
    status = read_status(wal)
    assert status is not None and status.disabled == []
    assert await ledger_db.set_enabled(engine, "m:1", False)
    await writer.ingest_once()
    status = read_status(wal)
    assert status is not None and status.disabled == ["m:1"]


async def test_an_external_runtime_reads_switches_and_database_health_from_the_writer(
    tmp_path: Path,
) -> None:
    """From the writer's report while it is alive; a stale report says nothing of the switches
    and means the database is not being written."""
    wal = tmp_path / "wal"
    settings = Settings.model_validate({
        "models": {"m": {"deployments": [
            {"provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "x"}]}},
        "sessions": {"default_selector": "m"},
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'nowhere' / 'ledger.db'}"},
        "ledger": {"writer": "external", "wal_dir": str(wal)},
    })  # fmt: skip
    runtime = await LedgerRuntime.open(settings)
    try:
        assert not runtime.engine_open, "opening an external runtime touches no database"
        assert await runtime.disabled_deployments() is None, "no report yet"
        alive = WriterStatus(pid=1, heartbeat=time.time(), interval_seconds=1.0, db_ok=True,
                             disabled=["m:0"])  # fmt: skip
        write_status(wal, alive)
        assert await runtime.disabled_deployments() == {"m:0"}
        assert await runtime.database_ok() is True
        assert not runtime.engine_open
        write_status(wal, replace(alive, heartbeat=time.time() - 60))  # the writer is gone
        assert await runtime.disabled_deployments() is None
        assert await runtime.database_ok() is False, "no writer: nothing reaches the database"
        assert not runtime.engine_open
    finally:
        await runtime.close()


def test_a_snapshot_file_is_written_aside_then_renamed(tmp_path: Path) -> None:
    path = write_health(tmp_path, [{"ts": "t", "deployment": "m:0"}])
    assert path.parent == tmp_path and path.name.startswith(f"health-{os.getpid()}-")
    assert json.loads(path.read_bytes()) == [{"ts": "t", "deployment": "m:0"}]
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "written aside, then renamed"


class Record:
    """What the ledger's database says is switched off (an in-memory stand-in for it)."""

    def __init__(self, disabled: set[str] | None) -> None:
        self.disabled = disabled
        self.reads = 0

    async def record_switch(self, name: str, enabled: bool) -> None:
        if self.disabled is not None:
            (self.disabled.discard if enabled else self.disabled.add)(name)

    async def disabled_deployments(self) -> set[str] | None:
        self.reads += 1
        return None if self.disabled is None else set(self.disabled)


async def test_switches_are_restored_to_a_redis_that_lost_them_and_only_then(
    redis_url: str,
) -> None:
    """A new Redis gets the record's switches; switching the last one back on (an emptied set,
    which Redis deletes) is not mistaken for a lost Redis; a flushed one is restored again."""
    client = async_client(redis_url)
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        gate = RedisGate(client)
        record = Record({"m:0"})
        disabled: set[str] = set()
        switches = OperatorSwitches(client, gate, record, disabled, prefix="t:")
        await switches.refresh()
        assert disabled == {"m:0"} and sync.smembers("t:disabled") == {"m:0", RESTORED}
        await switches.set_enabled("m:0", True)
        record.disabled = {"m:0"}  # the record lags (an external writer's report)
        await switches.refresh()
        assert disabled == set(), "an emptied set must not bring the old switch back"
        assert record.reads == 1
        sync.flushall()
        await switches.refresh()
        assert disabled == {"m:0"} and record.reads == 2
    finally:
        sync.close()
        await client.aclose()


async def test_switches_wait_for_a_record_that_cannot_say_yet(redis_url: str) -> None:
    client = async_client(redis_url)
    try:
        record = Record(None)
        disabled: set[str] = set()
        switches = OperatorSwitches(client, RedisGate(client), record, disabled, prefix="t:")
        await switches.refresh()
        await switches.refresh()
        assert record.reads == 2 and disabled == set()
        record.disabled = {"m:0"}
        await switches.refresh()
        assert disabled == {"m:0"} and record.reads == 3
    finally:
        await client.aclose()


def test_the_request_path_modules_do_not_import_sqlalchemy() -> None:
    """Importing the app imports no SQLAlchemy (a fresh interpreter: this one has it)."""
    code = "import sys, services.app; print(any('sqlalchemy' in m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.strip() == "False"
