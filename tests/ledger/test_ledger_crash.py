"""SIGKILL mid-traffic: every request that got an answer has exactly one ledger record after restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.client import HTTPException
from pathlib import Path

import pytest

from services.platform.redis_connection import free_port
from tests.helpers import (
    MAIN,
    SimProcess,
    api_process,
    healthy,
    http,
    recorded_request_ids,
    single_model_config,
    wait_until,
)


def ledger_writer_state(base: str) -> str | None:
    status, _, body = http("GET", base + "/health")
    return json.loads(body).get("ledger_writer") if status in (200, 503) else None


def ledger_writer_process(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`main.py ledger`, the external writer, as a real process."""
    return subprocess.Popen(
        [sys.executable, MAIN, "ledger", "--config", str(config)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("writer", ["inline", "external"])
def test_sigkill_loses_no_answered_request(
    redis_url: str, database_url: str, primary: SimProcess, tmp_path: Path, writer: str
) -> None:
    """Kill -9 the API (and the external writer) while 8 clients talk to it; after a restart the
    ledger has a record for every answer a client received (the replayed WAL), none twice."""
    # A long flush interval: at the kill most answered records exist only in the WAL.
    ledger = {"flush_interval_seconds": 30, "batch_size": 100000, "writer": writer}
    if writer == "external":  # seal often, so that the writer has work in flight at the kill
        ledger |= {"flush_interval_seconds": 0.2, "batch_size": 50}
    config = single_model_config(tmp_path, redis_url, primary, ledger=ledger)
    env = {"FR_DATABASE_URL": database_url, "FR_LEDGER_WAL_DIR": str(tmp_path / "wal")}
    port = free_port()
    proc = api_process(config, env, port)
    base = f"http://127.0.0.1:{port}"
    writer_proc = ledger_writer_process(config, env) if writer == "external" else None
    wait_until(lambda: healthy(base + "/readyz"), timeout=30, what="api")
    if writer_proc is not None:
        wait_until(lambda: ledger_writer_state(base) == "running", timeout=30, what="writer")

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

    def wal_bytes() -> int:
        return sum(p.stat().st_size for p in (tmp_path / "wal").glob("wal-*"))

    if writer_proc is not None:
        # The writer dies first, mid-ingest; the API, still answering, then refills the WAL. (Killed
        # the other way round, the writer could have drained every file just before: nothing to test.)
        os.kill(writer_proc.pid, signal.SIGKILL)
        writer_proc.wait(10)
        wait_until(lambda: wal_bytes() > 0, what="answered records in the WAL")
    os.kill(proc.pid, signal.SIGKILL)  # clients are mid-request
    proc.wait(10)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert wal_bytes() > 0, "the records should be waiting in the WAL"

    if writer_proc is not None:
        # Only the writer comes back: it alone must find the dead API's open and sealed files.
        restarted = ledger_writer_process(config, env)
        try:
            wait_until(lambda: not list((tmp_path / "wal").glob("wal-*")), timeout=30,
                       what="the writer to ingest every WAL file")  # fmt: skip
            restarted.terminate()
            assert restarted.wait(30) == 0
        finally:
            restarted.kill()
        ids = recorded_request_ids(database_url)
    else:
        port = free_port()
        restarted = api_process(config, env, port)
        try:
            wait_until(lambda: healthy(f"http://127.0.0.1:{port}/readyz"), timeout=30,
                       what="restart")  # fmt: skip
            ids = recorded_request_ids(database_url)
        finally:
            restarted.terminate()
            restarted.wait(30)
    assert len(ids) == len(set(ids)), "a request was recorded twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered requests have no record"
