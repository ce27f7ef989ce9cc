"""Storage faults made real: a WAL directory that cannot be written, a disk that is full, torn
writes. Whatever the disk does, every answered request ends up in the ledger exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.app import create_app
from services.ledger.db import make_engine, records
from services.ledger.records import UsageRecord, decode, encode
from services.ledger.wal import Ledger
from services.platform.redis_connection import free_port
from tests.helpers import (
    GatewayServer,
    SimProcess,
    api_process,
    healthy,
    http,
    openai_model,
    recorded_request_ids,
    settings_for,
    single_model_config,
    wait_until,
    without_file_override,
)

TURN = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}


def record(n: int) -> UsageRecord:
    return UsageRecord(kind="request", request_id=f"r{n}", model="m", status=200, outcome="ok",
                       tokens_in=10, tokens_out=5, deployment="m:0")  # fmt: skip


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `path` (skipped, with the reason, where mounting is not allowed)."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_torn_line_is_skipped_and_never_swallows_the_next_record(tmp_path: Path) -> None:
    """A write cut mid-line, then a good one: the reader skips the torn line and keeps the rest."""
    whole = encode([record(1)])
    torn = encode([record(2)])[:40]
    raw = whole + torn + b"\n" + encode([record(3)])  # the writer's guard: a fresh line
    assert [r.request_id for r in decode(raw, tmp_path / "wal")] == ["r1", "r3"]
    merged = whole + torn + encode([record(3)])  # without the guard the two would merge
    assert [r.request_id for r in decode(merged, tmp_path / "wal")] == ["r1"], (
        "a merged line fails its checksum instead of being half-read"
    )
    corrupt = whole.replace(b'"m:0"', b'"m:1"')
    assert decode(corrupt, tmp_path / "wal") == [], "a changed byte fails the checksum"
    legacy = b'{"kind":"request","request_id":"old","model":"m","status":200,"outcome":"ok"}\n'
    assert [r.request_id for r in decode(legacy, tmp_path / "wal")] == ["old"]


async def test_a_full_disk_keeps_records_in_memory_until_written_or_committed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """On a full tmpfs the WAL write fails part-way: the records stay in memory, the ledger says
    why, the next write starts a fresh line, and once there is room again they are written and
    committed, each exactly once."""
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        ledger = Ledger(engine, disk / "wal")
        ledger.start()
        ledger.append([record(0)])
        filler = fill(disk)
        ledger.append([record(n) for n in range(1, 40)])  # about 15 kB: torn, then ENOSPC
        assert ledger.unlogged == 39 and ledger.pending == 40
        problem = ledger.problem()
        assert problem is not None and "only in memory" in problem and "space" in problem
        filler.unlink()
        assert await ledger.flush() == 40
        assert ledger.unlogged == 0 and ledger.problem() is None
        assert sorted(await recorded_ids(engine)) == sorted(f"r{n}" for n in range(40))
        await ledger.close()


async def recorded_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [row[0] for row in await conn.execute(sa.select(records.c.request_id))]


async def test_with_the_database_down_records_reach_the_wal_once_the_disk_has_room(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Both paths down (a full disk, a database that refuses connections): the records wait in
    memory; the flush loop writes them to the WAL as soon as the disk has room, so that a process
    that dies after that point loses nothing: the next ledger replays them."""
    refused = make_engine(f"postgresql+asyncpg://fr@127.0.0.1:{free_port()}/none")
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        ledger = Ledger(refused, disk / "wal")
        ledger.start()
        filler = fill(disk)
        ledger.append([record(n) for n in range(20)])
        assert ledger.unlogged == 20
        assert await ledger.flush() == 0 and ledger.unlogged == 20, "still nowhere to go"
        filler.unlink()
        assert await ledger.flush() == 0, "the database is still down"
        assert ledger.unlogged == 0 and not ledger.db_ok
        problem = ledger.problem()
        assert problem is not None and "database unreachable" in problem
        os.close(ledger._fd)  # the process dies: its lock goes with it
        ledger._fd = -1
        survivor = Ledger(engine, disk / "wal")
        survivor.start()
        assert await survivor.replay() == 20
        assert sorted(await recorded_ids(engine)) == sorted(f"r{n}" for n in range(20))
        await survivor.close()
    await refused.dispose()


def ledger_health(base: str) -> dict[str, object]:
    return dict(json.loads(http("GET", base + "/health")[2]))


@pytest.mark.parametrize("fault", ["unwritable directory", "full disk"])
def test_a_storage_fault_under_load_loses_no_answered_request(
    redis_url: str, database_url: str, primary: SimProcess, tmp_path: Path, fault: str
) -> None:
    """8 clients talk to `main.py api` while its WAL directory cannot be written (the process
    runs without the capabilities that let root ignore permissions) or its disk is full: every
    request is answered, /health says `degraded` with the reason while it lasts and `ok` after;
    after a restart the ledger holds every answered request exactly once."""
    disk = tmp_path / "disk"
    stack = contextlib.ExitStack()
    if fault == "full disk":
        stack.enter_context(small_tmpfs(disk, "1m"))
    wal = disk / "wal"
    config = single_model_config(tmp_path, redis_url, primary,
                                 ledger={"flush_interval_seconds": 0.2})  # fmt: skip
    env = {"FR_DATABASE_URL": database_url, "FR_LEDGER_WAL_DIR": str(wal)}
    with stack:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = api_process(config, env, port, prefix=without_file_override())
        answered: list[str] = []
        failed: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    status, headers, _ = http("POST", base + "/v1/chat/completions", TURN)
                except (OSError, HTTPException):
                    continue
                if status == 200:
                    answered.append(headers["x-request-id"])
                else:
                    failed.append(status)

        threads = [threading.Thread(target=client) for _ in range(8)]
        try:
            wait_until(lambda: healthy(base + "/readyz"), timeout=30, what="api")
            for thread in threads:
                thread.start()
            wait_until(lambda: len(answered) >= 50, what="traffic")
            if fault == "full disk":
                filler = fill(disk)
            else:
                wal.chmod(0o555)
            wait_until(lambda: ledger_health(base).get("ledger_ok") is False, what="degraded")
            during = ledger_health(base)
            assert during["status"] == "degraded" and during["ledger_problem"]
            before = len(answered)
            wait_until(lambda: len(answered) >= before + 200, timeout=30, what="answers")
            if fault == "full disk":
                filler.unlink()
            else:
                wal.chmod(0o755)
            wait_until(lambda: ledger_health(base).get("ledger_ok") is True, what="recovery")
            stop.set()
            for thread in threads:
                thread.join(15)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(30)
        # A restart replays whatever a file still held; nothing may be counted twice.
        restarted = api_process(config, env, port)
        try:
            wait_until(lambda: healthy(base + "/readyz"), timeout=30, what="restart")
        finally:
            restarted.terminate()
            restarted.wait(30)
    assert failed == [], "a storage fault must never fail a request"
    ids = recorded_request_ids(database_url)
    assert len(ids) == len(set(ids)), "no answered request recorded twice"
    assert sorted(ids) == sorted(answered), f"{len(answered)} answered, {len(ids)} recorded"


async def test_memory_is_bounded_spilling_to_the_wal_and_refusing_only_when_it_cannot(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The database down, 100 records the bound: records safe in the WAL leave memory for
    replay; with the disk full too, `refuse` refuses new turns and `answer` counts its losses."""
    refused = make_engine(f"postgresql+asyncpg://fr@127.0.0.1:{free_port()}/none")
    with small_tmpfs(tmp_path / "disk", "512k") as disk:
        ledger = Ledger(refused, disk / "wal", max_pending=100)
        ledger.start()
        ledger.append([record(n) for n in range(100)])
        assert ledger.full and not ledger.refuses_new_turns(), "spilled instead"
        assert ledger.pending == 0 and ledger.problem() is None
        ledger.append([record(100)])
        assert await ledger.flush() == 0 and not ledger.db_ok, "the database is still down"
        filler = fill(disk)
        ledger.append([record(n) for n in range(101, 200)])  # memory only now
        assert ledger.full and ledger.unlogged == 99
        assert ledger.refuses_new_turns(), "nowhere safe to put more: refuse"
        ledger.when_full = "answer"
        assert not ledger.refuses_new_turns()
        ledger.append([record(200)])
        assert ledger.dropped == 1, "answered unrecorded, and counted"
        problem = ledger.problem()
        assert problem is not None and problem.startswith("full")
        filler.unlink()
        ledger._engine = engine  # the database is back
        await ledger.flush()
        await ledger.flush()
        assert sorted(await recorded_ids(engine)) == sorted(f"r{n}" for n in range(200))
        assert ledger.pending == 0 and ledger.problem() is None
        await ledger.close()
    await refused.dispose()


async def test_records_a_flush_has_taken_count_against_the_bound(tmp_path: Path) -> None:
    """While a flush runs, its batch is out of the buffer and returns to it if the flush fails.
    Counted only in the buffer, records appended meanwhile went past `max_pending_records`, as
    many as arrived during the flush (found by a gateway test that failed one run in seven)."""
    refused = make_engine(f"postgresql+asyncpg://fr@127.0.0.1:{free_port()}/none")
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)  # nothing can be spilled to the WAL either
        ledger = Ledger(refused, disk / "wal", max_pending=10, when_full="answer")
        ledger.start()
        ledger.append([record(n) for n in range(10)])
        flushing = asyncio.create_task(ledger.flush())
        for _ in range(3):
            await asyncio.sleep(0)  # the flush takes the batch and waits for the database
        assert ledger.buffer == [] and ledger.pending == 10 and ledger.full
        ledger.append([record(10)])
        assert ledger.dropped == 1, "answered unrecorded: the bound holds during the flush"
        assert await flushing == 0
        assert len(ledger.buffer) == 10 and ledger.pending == 10
        await ledger.close()
    await refused.dispose()


@pytest.mark.parametrize("when_full", ["refuse", "answer"])
def test_a_gateway_whose_ledger_is_full_refuses_or_answers_as_configured(
    redis_url: str, primary: SimProcess, tmp_path: Path, when_full: str
) -> None:
    """Database down and WAL disk full: after `max_pending_records` answers held in memory, the
    next request gets 503 `ledger_full` with Retry-After (`refuse`), or is answered and counted
    as dropped (`answer`)."""
    refused = f"postgresql+asyncpg://fr@127.0.0.1:{free_port()}/none"
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)
        settings = settings_for(
            redis_url, tmp_path / "logs", {"primary": openai_model(primary.openai_url, "p")},
            database={"url": refused},
            ledger={"wal_dir": str(disk / "wal"), "max_pending_records": 100,
                    "when_full": when_full},
            resilience={"health": {"enabled": False}},
        )  # fmt: skip
        with GatewayServer(create_app(settings, environ={})) as server:
            url = server.base + "/v1/chat/completions"
            statuses = [http("POST", url, TURN)[0] for _ in range(100)]
            assert statuses == [200] * 100, "held in memory up to the bound"
            status, headers, body = http("POST", url, TURN)
            health = json.loads(http("GET", server.base + "/health")[2])
            metrics = http("GET", server.base + "/metrics")[2].decode()
    assert health["ledger_ok"] is False and health["ledger_problem"].startswith("full")
    assert "llm_ledger_unlogged_records 100.0" in metrics
    if when_full == "refuse":
        assert status == 503 and headers["retry-after"] == "5"
        assert json.loads(body)["error"]["code"] == "ledger_full"
    else:
        assert status == 200
        assert "llm_ledger_dropped_records_total 1.0" in metrics
