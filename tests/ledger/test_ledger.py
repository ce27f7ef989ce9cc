"""The ledger on SQLite and PostgreSQL: WAL before buffer, commit before truncation, idempotent replay."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db
from services.ledger.db import daily_costs, make_engine, migrate, records
from services.ledger.records import RECORD_FIELDS, UsageRecord, decode, encode
from services.ledger.wal import Ledger
from services.ledger.writer import LedgerWriter, read_status


def request(n: int, **kw: object) -> UsageRecord:
    fields = {"kind": "request", "request_id": f"r{n}", "model": "m", "status": 200, "outcome": "ok",
              "tokens_in": 10, "tokens_out": 5, "cost_nanousd": 1000, "deployment": "m:0",
              "ts": 1_767_225_600.0 + n, **kw}  # fmt: skip
    return UsageRecord(**fields)  # type: ignore[arg-type]


async def count(engine: AsyncEngine, table: sa.Table = records) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() or 0
        )


async def test_records_reach_the_wal_at_once_and_the_database_on_flush(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """append writes the WAL before anything else; flush commits, then deletes the WAL file."""
    ledger = Ledger(engine, tmp_path / "wal")
    ledger.start()
    ledger.append([request(1), request(2)])
    wal_files = list((tmp_path / "wal").glob("wal-*"))
    assert len(wal_files) == 1 and len(decode(wal_files[0].read_bytes(), wal_files[0])) == 2
    assert ledger.wal_size_bytes > 0 and await count(engine) == 0
    assert await ledger.flush() == 2
    assert await count(engine) == 2
    assert ledger.wal_size_bytes == 0 and ledger.buffer == []
    await ledger.close()
    assert list((tmp_path / "wal").glob("wal-*")) == []


async def test_replay_is_idempotent_and_aggregates_count_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A dead process's WAL replayed twice (the second time from a copy) adds each record once."""
    wal = tmp_path / "wal"
    wal.mkdir()
    batch = [request(i) for i in range(5)] + [request(9, kind="attempt")]
    (wal / "wal-999999-dead.jsonl").write_bytes(encode(batch))
    shutil.copy(wal / "wal-999999-dead.jsonl", tmp_path / "copy.jsonl")
    ledger = Ledger(engine, wal)
    ledger.start()
    assert await ledger.replay() == 6
    shutil.copy(tmp_path / "copy.jsonl", wal / "wal-999999-again.jsonl")
    assert await ledger.replay() == 0
    assert await count(engine) == 6
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(daily_costs))).one()
    # Requests only (the attempt row repeats a request's tokens), counted once.
    assert (row.requests, row.tokens_in, row.cost_nanousd) == (5, 50, 5000)
    assert list(wal.glob("wal-999999*")) == []
    await ledger.close()


async def test_a_live_processes_wal_is_not_replayed(engine: AsyncEngine, tmp_path: Path) -> None:
    """Each process holds a lock on its WAL file, so another process's replay leaves it alone."""
    alive = Ledger(engine, tmp_path / "wal")
    alive.start()
    alive.append([request(1)])
    other = Ledger(engine, tmp_path / "wal")
    other.start()
    assert await other.replay() == 0
    assert await count(engine) == 0
    assert await alive.flush() == 1
    await alive.close()
    await other.close()


async def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a crash is skipped; the others are read."""
    raw = encode([request(1), request(2)])
    records_ = decode(raw[:-20], tmp_path / "x")
    assert [r.request_id for r in records_] == ["r1"]


async def test_database_down_keeps_records_until_it_returns(
    tmp_path: Path, database_url: str
) -> None:
    """A failed flush puts the batch back and keeps its WAL file; a later flush commits it all."""
    dead = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    ledger = Ledger(dead, tmp_path / "wal")
    ledger.start()
    ledger.append([request(1)])
    assert await ledger.flush() == 0
    ledger.append([request(2)])
    assert await ledger.flush() == 0
    assert not ledger.db_ok and len(ledger.buffer) == 2
    assert len(list((tmp_path / "wal").glob("wal-*"))) == 3  # two set aside, one current
    await dead.dispose()
    alive = make_engine(database_url)
    await migrate(alive, tmp_path / "lock")
    ledger._engine = alive  # the database came back
    assert await ledger.flush() == 2
    assert await count(alive) == 2 and ledger.wal_size_bytes == 0
    await ledger.close()
    assert list((tmp_path / "wal").glob("wal-*")) == []
    await alive.dispose()


async def test_providers_registry_keeps_the_operator_switch(engine: AsyncEngine) -> None:
    """Re-registering configured deployments refreshes them but keeps `enabled` as set."""
    row = {
        "name": "m:0",
        "model": "m",
        "kind": "openai",
        "priority": 0,
        "local": False,
        "breaker": {},
    }
    await ledger_db.sync_providers(engine, [row])
    assert await ledger_db.set_enabled(engine, "m:0", False)
    await ledger_db.sync_providers(engine, [{**row, "priority": 3}])
    rows = await ledger_db.provider_rows(engine)
    assert rows[0]["enabled"] is False and rows[0]["priority"] == 3
    assert await ledger_db.disabled_providers(engine) == {"m:0"}
    assert not await ledger_db.set_enabled(engine, "nope", True)


async def test_external_writer_ingests_what_the_api_sealed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """With `ledger.writer: external` a flush only seals the WAL file; the writer inserts it,
    deletes it after the commit and reports through its status file."""
    wal = tmp_path / "wal"
    ledger = Ledger(engine, wal, writes_database=False)
    ledger.start()
    ledger.append([request(1), request(2), request(3)])
    assert await ledger.flush() == 3
    assert await count(engine) == 0, "the API process must not write the database"
    assert len(list(wal.glob("wal-*.sealed"))) == 1 and ledger.buffer == []
    assert ledger.wal_size_bytes > 0  # the sealed file still waits for the writer
    writer = LedgerWriter(engine, wal, interval=1.0)
    assert await writer.start()
    assert await writer.ingest_once() == 3
    assert await count(engine) == 3 and list(wal.glob("wal-*.sealed")) == []
    ledger.append([request(4)])
    assert await writer.ingest_once() == 0, "the live process's open file is not taken"
    await ledger.close()  # seals the last file
    assert await writer.ingest_once() == 1
    assert await count(engine) == 4 and list(wal.glob("wal-*")) == []
    status = read_status(wal)
    assert status is not None and status.db_ok and status.last_db_write_at is not None
    assert status.alive(status.heartbeat + 2) and not status.alive(status.heartbeat + 11)


async def test_external_writer_keeps_files_while_the_database_is_down(
    tmp_path: Path, database_url: str
) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    (wal / "wal-999999-dead.jsonl").write_bytes(encode([request(1), request(2)]))
    dead = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    writer = LedgerWriter(dead, wal)
    assert not await writer.start()
    status = read_status(wal)
    assert status is not None and not status.db_ok
    assert await writer.ingest_once() == 0
    assert (wal / "wal-999999-dead.jsonl").exists()
    await dead.dispose()
    alive = make_engine(database_url)
    writer = LedgerWriter(alive, wal)
    assert await writer.start() and await writer.ingest_once() == 2
    assert await count(alive) == 2 and list(wal.glob("wal-*")) == []
    await alive.dispose()


def test_flushes_are_cut_into_a_fixed_ladder_of_statement_sizes() -> None:
    """Every size is covered exactly; eleven sizes at most, whatever the batch."""
    seen: set[int] = set()
    for rows in range(1, 4200):
        sizes = ledger_db.sqlite_chunks(rows)
        assert sum(sizes) == rows and sizes == sorted(sizes, reverse=True)
        seen.update(sizes)
    assert seen == {1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1}


async def test_flushes_of_every_size_prepare_few_distinct_statements(tmp_path: Path) -> None:
    """The sqlite3 module caches its last 128 prepared statements, about 1.2 KB of native memory
    per row of a multi-row INSERT: flushes of 1 to 300 rows once prepared 300 distinct
    statements and grew a worker by 15 MB. They now share the ladder's (at most eleven)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await migrate(engine, tmp_path / "lock")
    statements: set[str] = set()

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("INSERT OR IGNORE INTO llm_records"):
            statements.add(statement)

    n = 0
    for size in range(1, 301):
        assert (
            await ledger_db.insert_records(engine, [request(n + i).to_row() for i in range(size)])
            == size
        )
        n += size
    assert await count(engine) == n == 300 * 301 // 2
    assert len(statements) <= 9  # 1 to 300 rows: 256 and below
    await engine.dispose()


class _TurnTaggedRow(dict[str, object]):
    """A row that notes the event loop turn each time its timestamp is read for parameters."""

    seen: list[int]
    turn: list[int]

    def __getitem__(self, key: str) -> object:
        if key == "ts":
            self.seen.append(self.turn[0])
        return super().__getitem__(key)


class Resumptions:
    """Awaits a coroutine and counts how often the loop resumed it: under load each of those
    waits a whole pass of the loop, so this is what a flush costs in passes, not in time."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.count = 0

    def __await__(self) -> Any:
        inner = self.coro.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            self.count += 1
            try:
                out = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = (yield out), None
            except BaseException as exc:
                value, error = None, exc


async def flush_counting_turns(tmp_path: Path, records: int) -> tuple[list[int], list[int], int]:
    """Flush `records` records while a ticker counts event loop turns: the turn each row was
    built in, the turn each row's parameters were read in, and how often the flush was resumed
    (the loop passes it needs)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await migrate(engine, tmp_path / "lock")
    turn, built, read = [0], [], []

    class TaggedRecord(UsageRecord):
        def to_row(self) -> dict[str, object]:
            built.append(turn[0])
            row = _TurnTaggedRow(UsageRecord.to_row(self))
            row.seen, row.turn = read, turn
            return row

    async def ticker() -> None:
        while True:
            turn[0] += 1
            await asyncio.sleep(0)

    ledger = Ledger(engine, tmp_path / "wal")
    ledger.start()
    try:
        ledger.append([request(n) for n in range(records)])
        # The same records, tagged: the WAL holds them already, the flush reads the buffer.
        ledger.buffer = [TaggedRecord(**{f: getattr(r, f) for f in RECORD_FIELDS})
                         for r in ledger.buffer]  # fmt: skip
        ticking = asyncio.create_task(ticker())
        flushing = Resumptions(ledger.flush())
        assert await flushing == records
        took = flushing.count
        ticking.cancel()
        assert await count(engine) == records
        assert len(built) == len(read) == records
        return built, read, took
    finally:
        await ledger.close()
        await engine.dispose()


async def test_a_flush_returns_to_the_event_loop_while_it_prepares(tmp_path: Path) -> None:
    """A regular flush (a second's records) builds rows and statement parameters 64 at a time,
    letting the loop serve requests in between, rather than holding it for the whole batch
    (which was most of the gateway's p99 at concurrency 1). Counted in loop turns, not timed."""
    built, read, _ = await flush_counting_turns(tmp_path, 500)
    assert max(Counter(built).values()) <= ledger_db.YIELD_EVERY
    assert max(Counter(read).values()) <= ledger_db.YIELD_EVERY


async def test_a_backlog_is_flushed_in_a_bounded_number_of_loop_turns(tmp_path: Path) -> None:
    """Under load every return to the loop waits a whole pass of it. A flush that returned
    every 64 records fell behind the requests it recorded and its backlog grew without bound
    (bench/RESULTS.md, 2026-11-24); a backlog ten times larger now takes about as many turns."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    _, _, small = await flush_counting_turns(tmp_path / "small", 2_000)
    built, read, large = await flush_counting_turns(tmp_path / "large", 20_000)
    assert large <= 2 * small, (small, large)  # 64 at a time: over 1,000 for 20,000
    assert max(Counter(built).values()) <= ledger_db.slice_size(20_000)
    assert max(Counter(read).values()) <= ledger_db.slice_size(20_000)
