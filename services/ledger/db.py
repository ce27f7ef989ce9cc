"""The ledger's database: tables, migrations, idempotent inserts and the report queries.

SQLAlchemy Core with an async engine: SQLite through aiosqlite (WAL mode, the embedded default)
or PostgreSQL through asyncpg. The schema is owned by alembic (`migrations/`, next to this
module), upgraded to head on start under a lock so that several workers starting together do
not race. Records are inserted with ON CONFLICT DO NOTHING on their id, which is what makes
replaying a write-ahead log twice harmless; the daily aggregates are incremented only for the
rows that insert really added.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# What a database call can fail with that is the database's fault (unreachable, refused, timed
# out), not ours: callers catch these, keep their data and retry.
DB_ERRORS = (sa.exc.SQLAlchemyError, OSError, asyncio.TimeoutError)

metadata = sa.MetaData()

providers = sa.Table(
    "providers",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("local", sa.Boolean, nullable=False, default=False),
    sa.Column("breaker", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

records = sa.Table(
    "llm_records",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # request | attempt | external
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(128)),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("original_model", sa.String(128)),
    sa.Column("deployment", sa.String(128)),
    sa.Column("provider", sa.String(32)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.String(64)),
    sa.Column("tokens_in", sa.Integer, nullable=False),
    sa.Column("tokens_out", sa.Integer, nullable=False),
    sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("local", sa.Boolean, nullable=False),
    sa.Column("estimated", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("api_key_id", sa.String(32)),  # whose usage (migration 0002); None: external/old
    # No secondary index: every index is paid for by every request. Ids start with their
    # millisecond timestamp (services/ledger/wal.py `record_id`), so the primary key answers time
    # ranges; on SQLite the table is clustered by it (one B-tree insert per record).
    sqlite_with_rowid=False,
)

health_snapshots = sa.Table(
    "provider_health",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("deployment", sa.String(128), nullable=False),
    sa.Column("breaker_state", sa.String(16), nullable=False),
    sa.Column("healthy", sa.Boolean, nullable=False),
    sa.Column("success_rate", sa.Float),
    sa.Column("p50_ms", sa.Float),
    sa.Column("p95_ms", sa.Float),
)

daily_costs = sa.Table(
    "daily_costs",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("deployment", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("tokens_in", sa.BigInteger, nullable=False),
    sa.Column("tokens_out", sa.BigInteger, nullable=False),
    sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
)

# Rows that carry a request's tokens and cost (attempt rows repeat the winning attempt's).
BILLED_KINDS = ("request", "external")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases or in-memory SQLite)."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL mode, NORMAL sync and a busy timeout on every connect."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=path is None)
    if path is not None:

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA cache_size=-32768")  # 32 MiB of page cache
            cursor.close()

    return engine


MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@functools.cache
def head_revision() -> str:
    """The newest migration's id, read from the migration files' `revision` and `down_revision`
    lines: what alembic would call head, found without importing alembic (tested to agree)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        revision = re.search(r'^revision = "([^"]+)"', text, re.MULTILINE)
        parent = re.search(r'^down_revision = "([^"]+)"', text, re.MULTILINE)
        if revision:
            revisions.add(revision.group(1))
        if parent:
            parents.add(parent.group(1))
    (head,) = revisions - parents  # one head: the migrations form a line
    return head


def _alembic_config(connection: sa.Connection) -> AlembicConfig:
    from alembic import config as alembic_config

    config = alembic_config.Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _current_revision(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: sa.Connection) -> None:
    """Upgrade to head unless the schema is there already. Alembic (about 10 MB of RSS once
    imported) is only imported when there is something to upgrade, so the API processes of a
    deployment whose schema is current never load it."""
    if _current_revision(connection) == head_revision():
        return
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine, lock_dir: Path) -> None:
    """Upgrade the schema to head: under a file lock (workers on one host) and, on PostgreSQL,
    an advisory lock (instances on several hosts)."""
    lock = await asyncio.to_thread(_lock_file, lock_dir / "migrate.lock")
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                key = int(hashlib.sha256(b"fallback-routing-migrate").hexdigest()[:15], 16)
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            await conn.run_sync(_upgrade)
    finally:
        lock.close()  # closing the file releases the lock


def _lock_file(path: Path) -> IO[str]:
    """Open and exclusively lock `path` (blocking: run it in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _insert(dialect: str, table: sa.Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def insert_records(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ledger rows once each (by id) and add the new ones to the daily aggregates, in one
    transaction; answer how many rows were new."""
    if not rows:
        return 0
    async with engine.begin() as conn:
        dialect = conn.dialect.name
        new_rows = await _insert_new(conn, rows)
        step = slice_size(len(new_rows))
        totals: dict[tuple[date, str, str], list[int]] = {}
        for i, row in enumerate(new_rows):
            if i % step == step - 1:
                await asyncio.sleep(0)  # let the loop serve requests (see slice_size)
            if row["kind"] in BILLED_KINDS:
                key = (row["day"], row["deployment"] or "", row["model"])
                t = totals.setdefault(key, [0, 0, 0, 0])
                t[0] += 1
                t[1] += row["tokens_in"]
                t[2] += row["tokens_out"]
                t[3] += row["cost_nanousd"]
        if totals:
            upsert = _insert(dialect, daily_costs)
            upsert = upsert.on_conflict_do_update(
                index_elements=["day", "deployment", "model"],
                set_={
                    c: daily_costs.c[c] + upsert.excluded[c]
                    for c in ("requests", "tokens_in", "tokens_out", "cost_nanousd")
                },
            )
            await conn.execute(
                upsert,
                [
                    {
                        "day": d,
                        "deployment": dep,
                        "model": m,
                        "requests": t[0],
                        "tokens_in": t[1],
                        "tokens_out": t[2],
                        "cost_nanousd": t[3],
                    }
                    for (d, dep, m), t in totals.items()
                ],
            )
        return len(new_rows)


RECORD_COLUMNS = tuple(c.name for c in records.columns)
_TS, _DAY = RECORD_COLUMNS.index("ts"), RECORD_COLUMNS.index("day")
# Rows per multi-row INSERT: 1,024 x 22 parameters stays under SQLite's 32,766 limit. Every
# statement is a return to the event loop, which under load waits a whole pass of it: with
# 64-row statements a worker grew by 0.7 MB/s, its flushes falling behind the requests they
# recorded (the cause found on 2026-11-24, see MAX_SLICES). Larger statements hold the loop
# longer while the sqlite thread binds them (about 1.7 ms per 1,000 records), and their prepared
# forms cost more native memory (1.2 KB a row: the ladder of sqlite_chunks holds 2.4 MB).
SQLITE_CHUNK = 1024


def sqlite_chunks(rows: int) -> list[int]:
    """The statement sizes a flush of `rows` rows is cut into: full chunks, then the rest in
    powers of two (300 rows: 256, 32, 8, 4).

    Only eleven distinct statements therefore ever exist. The sqlite3 module keeps its last 128
    prepared statements, and a prepared multi-row INSERT holds about 1.2 KB of native memory per
    row: cut at any size, flushes of ever new sizes filled that cache with statements of
    hundreds of rows, and an inline writer's worker grew by 15 MB and kept creeping
    (bench/RESULTS.md)."""
    sizes = [SQLITE_CHUNK] * (rows // SQLITE_CHUNK)
    rest, size = rows % SQLITE_CHUNK, SQLITE_CHUNK // 2
    while rest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    return sizes


@functools.cache
def _sqlite_insert(rows: int) -> str:
    """INSERT OR IGNORE of `rows` rows in one statement (built from the table's own column
    names, never from input)."""
    group = f"({', '.join('?' * len(RECORD_COLUMNS))})"
    columns = ", ".join(RECORD_COLUMNS)
    return f"INSERT OR IGNORE INTO llm_records ({columns}) VALUES {', '.join([group] * rows)}"  # noqa: S608


# Items a flush prepares between two returns to the event loop: about 0.5 ms of work (a record
# costs some 4 µs to become a row and 8 µs to become parameters), so the flush's own Python work
# holds the loop about that long at a time (binding a statement's parameters on the sqlite
# thread can hold it longer: see SQLITE_CHUNK). Done in one go, a flush of a second's records
# at 1,000 requests/s held the loop for about 5 ms (its row building), then 2 ms per statement.
YIELD_EVERY = 64
# ... but never more than this many returns per step of a flush. Under load every return to the
# loop waits for a whole pass of it (every ready request runs first), so a flush that yielded
# every 64 items in each of its three steps moved about 21 records per pass, while a pass at
# concurrency 50 admits up to 50 new ones: the inline writer fell behind, its buffer grew
# without bound (20,000+ records, flushes of 14 s, RSS +40 MB a minute) until
# `max_pending_records` would refuse requests (bench/RESULTS.md, 2026-11-24). A large flush
# therefore takes larger slices (a 20,000-record backlog: 2,500 items, some 30 ms of loop at a
# time) and catches up in a bounded number of passes; a regular flush is unchanged.
MAX_SLICES = 8
T = TypeVar("T")
R = TypeVar("R")


def slice_size(items: int) -> int:
    """Items a step of a flush of `items` handles between two returns to the event loop."""
    return max(YIELD_EVERY, -(-items // MAX_SLICES))


async def map_yielding(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`fn` over `items`, returning to the event loop every `slice_size` items. The work stays
    on the loop's thread: in another thread it would hold the GIL, and the loop would wait up to
    the interpreter's 5 ms switch interval to get it back."""
    out: list[R] = []
    step = slice_size(len(items))
    for start in range(0, len(items), step):
        out.extend(fn(item) for item in items[start : start + step])
        if start + step < len(items):
            await asyncio.sleep(0)
    return out


def _sqlite_params(row: dict[str, Any]) -> tuple[Any, ...]:
    # What SQLAlchemy's SQLite types would store: datetimes and dates as text, bools as 0/1
    # (sqlite3 stores a Python bool as an integer already).
    values = [row[c] for c in RECORD_COLUMNS]
    values[_TS] = values[_TS].strftime("%Y-%m-%d %H:%M:%S.%f")
    values[_DAY] = values[_DAY].isoformat()
    return tuple(values)


async def _insert_new(conn: Any, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows not stored yet; answer those that were new.

    The common case on SQLite (every row new: a regular flush) is a few multi-row INSERTs at
    the driver level, cut by `sqlite_chunks`. A statement per chunk rather than one step per
    row matters beyond its own cost: the sqlite3 module drops and retakes the GIL around every
    step, and each handover stalled the event loop thread (bench/RESULTS.md). When some row
    already existed (a replay, or a retry after a commit whose answer was lost), that attempt is
    rolled back to its savepoint and SQLAlchemy's RETURNING path says which rows are new.
    """
    if conn.dialect.name == "sqlite":
        savepoint = await conn.begin_nested()
        inserted = start = 0
        # Parameters for the whole flush first, in slices of the flush's size (not per chunk:
        # that would be four returns to the loop per 256 rows again, see MAX_SLICES).
        every = await map_yielding(_sqlite_params, rows)
        for size in sqlite_chunks(len(rows)):
            params = tuple(itertools.chain.from_iterable(every[start : start + size]))
            start += size
            result = await conn.exec_driver_sql(_sqlite_insert(size), params)
            inserted += result.rowcount
        if inserted == len(rows):
            await savepoint.commit()
            return list(rows)
        await savepoint.rollback()
    stmt = _insert(conn.dialect.name, records).on_conflict_do_nothing(index_elements=["id"])
    result = await conn.execute(stmt.returning(records.c.id), list(rows))
    new_ids = {row[0] for row in result}
    return [row for row in rows if row["id"] in new_ids]


async def sync_providers(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> None:
    """Add configured deployments to the registry and refresh their settings; `enabled` (the
    operator's switch) is kept for deployments already registered."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        stmt = _insert(conn.dialect.name, providers)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                c: stmt.excluded[c]
                for c in ("model", "kind", "priority", "local", "breaker", "updated_at")
            },
        )
        await conn.execute(stmt, [{**row, "enabled": True, "updated_at": now} for row in rows])


async def set_enabled(engine: AsyncEngine, name: str, enabled: bool) -> bool:
    """Switch a provider on or off; False when there is no such provider."""
    async with engine.begin() as conn:
        result = await conn.execute(
            providers.update()
            .where(providers.c.name == name)
            .values(enabled=enabled, updated_at=datetime.now(UTC))
        )
        return bool(result.rowcount)


async def provider_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The provider registry, by priority."""
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(providers).order_by(providers.c.priority))
        return [plain_row(row) for row in result]


async def disabled_providers(engine: AsyncEngine) -> set[str]:
    """Names of the providers an operator switched off."""
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(providers.c.name).where(~providers.c.enabled))
        return {row[0] for row in result}


async def insert_health(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> None:
    """Store one health snapshot per deployment."""
    if rows:
        async with engine.begin() as conn:
            await conn.execute(health_snapshots.insert(), list(rows))


def plain_row(row: Any) -> dict[str, Any]:
    """A result row as a plain dict: str keys (SQLAlchemy's are a str subclass orjson refuses),
    and PostgreSQL's Decimal sums as int (or float)."""
    out = {str(key): value for key, value in row._mapping.items()}
    for key, value in out.items():
        if isinstance(value, Decimal):
            out[key] = int(value) if value == value.to_integral_value() else float(value)
    return out


async def last_write(engine: AsyncEngine) -> datetime | None:
    """When the newest record happened (what /health says before this process has flushed)."""
    async with engine.connect() as conn:
        newest = sa.select(records.c.ts).order_by(records.c.id.desc()).limit(1)
        value = (await conn.execute(newest)).scalar()
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # SQLite keeps no zone; we only ever write UTC
    return value if isinstance(value, datetime) else None


async def ping(engine: AsyncEngine) -> bool:
    """Whether the database answers."""
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except (sa.exc.SQLAlchemyError, OSError):
        return False
    return True
