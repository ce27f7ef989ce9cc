"""SIGKILL mid-traffic: every request that got an answer has exactly one ledger record after restart."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from http.client import HTTPException
from pathlib import Path

import sqlalchemy as sa

from services.ledger_db import make_engine, records
from services.redis_connection import free_port
from tests.helpers import SimProcess, api_process, healthy, http, single_model_config, wait_until


async def recorded_request_ids(database_url: str) -> list[str]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                sa.select(records.c.request_id).where(records.c.kind == "request")
            )
            return [row[0] for row in result]
    finally:
        await engine.dispose()


def test_sigkill_loses_no_answered_request(
    redis_url: str, database_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """Kill -9 the API while 8 clients talk to it; after a restart the ledger has a record for
    every answer a client received (the replayed WAL), and no record twice."""
    # A long flush interval: at the kill most answered records exist only in the WAL.
    ledger = {"flush_interval_seconds": 30, "batch_size": 100000}
    config = single_model_config(tmp_path, redis_url, primary, ledger=ledger)
    env = {"FR_DATABASE_URL": database_url, "FR_LEDGER_WAL_DIR": str(tmp_path / "wal")}
    port = free_port()
    proc = api_process(config, env, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: healthy(base + "/readyz"), timeout=30, what="api")

    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    turn = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}

    def client() -> None:
        while not stop.is_set():
            try:
                status, headers, _ = http("POST", base + "/v1/chat/completions", turn, timeout=5)
            except (OSError, HTTPException):
                return  # the server is gone
            if status == 200:
                with lock:
                    answered.append(headers["x-request-id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answered) >= 200, what="200 answers")
    os.kill(proc.pid, signal.SIGKILL)  # clients are mid-request
    proc.wait(10)
    stop.set()
    for thread in threads:
        thread.join(10)
    wal_bytes = sum(p.stat().st_size for p in (tmp_path / "wal").glob("wal-*"))
    assert wal_bytes > 0, "the records should be waiting in the WAL"

    port = free_port()
    restarted = api_process(config, env, port)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}/readyz"), timeout=30, what="restart")
        ids = asyncio.run(recorded_request_ids(database_url))
    finally:
        restarted.terminate()
        restarted.wait(30)
    assert len(ids) == len(set(ids)), "a request was recorded twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered requests have no record"
