"""SIGTERM with streams in flight: readiness flips first, the listener closes after the drain
delay, every stream still finishes with [DONE], the ledger keeps every record, exit code 0."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import threading
from pathlib import Path

import sqlalchemy as sa

from services.ledger.db import make_engine, records
from services.platform.redis_connection import free_port
from tests.helpers import SimProcess, api_process, healthy, single_model_config, wait_until


def stream(port: int, started: threading.Event, result: dict[str, object]) -> None:
    """One streamed completion read to its end; records its request id and last event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "primary", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})  # fmt: skip
    response = conn.getresponse()
    result["status"] = response.status
    result["request_id"] = response.getheader("x-request-id")
    events = []
    while line := response.readline():
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
            started.set()
    result["events"] = len(events)
    result["last"] = events[-1] if events else None
    conn.close()


def ready_status(port: int) -> int | None:
    """/readyz's status, or None when nothing listens any more."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/readyz")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


async def recorded(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(records.c.request_id))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


def test_sigterm_drains_streams_and_flips_readiness_first(redis_url: str, tmp_path: Path) -> None:
    slow = SimProcess("slow")
    slow.behave(tokens_per_second=15, response_tokens=45)  # each stream takes about 3 s
    config = single_model_config(tmp_path, redis_url, slow)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    port = free_port()
    env = {"FR_API_DRAIN_DELAY_SECONDS": "1.0", "FR_DATABASE_URL": database_url,
           "FR_LEDGER_FLUSH_INTERVAL_SECONDS": "60"}  # fmt: skip
    proc = api_process(config, env, port)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}/readyz"), timeout=30, what="api")
        results: list[dict[str, object]] = [{} for _ in range(5)]
        started = [threading.Event() for _ in results]
        threads = [threading.Thread(target=stream, args=(port, s, r))
                   for s, r in zip(started, results, strict=True)]  # fmt: skip
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(20), "every stream has its first event before the signal"
        os.kill(proc.pid, signal.SIGTERM)

        # Readiness turns 503 while the listener still answers...
        wait_until(lambda: ready_status(port) == 503, timeout=5, what="/readyz 503")
        # ...then the listener closes while the streams are still running...
        wait_until(lambda: ready_status(port) is None, timeout=10, what="the listener to close")
        assert any(thread.is_alive() for thread in threads), "streams outlive the listener"
        # ...and every stream ends normally.
        for thread in threads:
            thread.join(30)
        for result in results:
            assert result["status"] == 200 and result["last"] == b"[DONE]", result
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        slow.stop()
    # The flush interval is 60 s: these records reached the database through the shutdown flush.
    ids = asyncio.run(recorded(database_url))
    assert {str(r["request_id"]) for r in results} <= ids
    assert not list((tmp_path / "wal").glob("wal-*")), "nothing left waiting in the WAL"
