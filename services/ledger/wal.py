"""The usage ledger: every request and upstream attempt, recorded without ever losing one.

    append(records) --os.write--> WAL file (this process's own) --+--> memory buffer
                                                                   |
    flush (every flush_interval_seconds, or at batch_size):        v
        rename the WAL file aside, open a fresh one, take the buffer,
        INSERT ... ON CONFLICT DO NOTHING in one transaction, then delete the renamed file.

`append` runs on the request path before the response is sent, so a record is in the kernel
before its client has its answer: a SIGKILL after that loses nothing (`ledger.fsync` adds
power-cut safety). Because the buffer and the WAL file are appended together on the event loop,
the renamed file holds exactly the records taken from the buffer. If the database is down the
batch goes back to the buffer and its file stays until a later commit covers it.

On start, every WAL file in `wal_dir` that no live process holds (each process keeps an flock on
its own) is replayed and deleted: the same idempotent insert makes a second replay harmless.

With `ledger.writer: external` the flush does not touch the database: it *seals* the WAL file
(closes it, renamed `*.sealed`) and a separate process (`main.py ledger`, services/ledger/writer.py)
ingests sealed and orphaned files with the same replay. The API process then only appends and
renames, and the insert's CPU and GIL time are spent elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from loguru import logger
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db

DB_ERRORS = (SQLAlchemyError, OSError, asyncio.TimeoutError)


def record_id(at: float | None = None) -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits.

    Time-ordered, like a UUIDv7, so that inserts land at the end of the primary-key B-tree
    instead of at random pages (random ids made SQLite's inserts several times dearer once the
    table outgrew the page cache); unique without coordination between processes."""
    return f"{int((time.time() if at is None else at) * 1000):012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class UsageRecord:
    """One request, upstream attempt or externally reported usage."""

    kind: str  # request | attempt | external
    request_id: str
    model: str
    status: int
    outcome: str  # ok | error | cancelled | cache | degraded | failed | interrupted | continued
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nanousd: int = 0
    duration_ms: float = 0.0
    ttft_ms: float | None = None
    session_id: str | None = None
    original_model: str | None = None
    deployment: str | None = None
    provider: str | None = None
    error: str | None = None
    fallback: bool = False
    local: bool = False
    estimated: bool = False
    # On a request row: the upstream calls it took. A request answered by its first call has no
    # separate attempt row; its own row describes that call (see docs/ledger.md).
    attempts: int = 0
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=record_id)

    def to_row(self) -> dict[str, Any]:
        """The database row (UTC timestamp and day)."""
        row = {name: getattr(self, name) for name in RECORD_FIELDS}
        when = datetime.fromtimestamp(self.ts, UTC)
        row["ts"], row["day"] = when, when.date()
        return row


RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))


def encode(records: list[UsageRecord]) -> bytes:
    """WAL lines: one JSON object per record."""
    return b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_DATACLASS) + b"\n" for r in records)


def decode(raw: bytes, source: Path) -> list[UsageRecord]:
    """Records from WAL bytes; a torn line (a power cut mid-write) is skipped with a warning."""
    out = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(UsageRecord(**orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError):
            logger.warning("skipping unreadable line {} of {}", number, source)
    return out


SEALED = ".sealed"


async def ingest_unowned(
    engine: AsyncEngine, wal_dir: Path, *, skip: set[Path] | None = None, quiet: bool = False
) -> tuple[int, int]:
    """Insert the records of every WAL file in `wal_dir` that no live process holds, deleting
    each after its commit; (records read, records new). Sealed files are unowned by design."""
    read = added = 0
    # A listing of a handful of local files; not worth a thread hop.
    for path in sorted(wal_dir.glob("wal-*")):  # noqa: ASYNC240
        if skip and path in skip:
            continue
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            continue  # another process ingested it first
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process owns it
            found = decode(handle.read(), path)
            new = await ledger_db.insert_records(engine, [r.to_row() for r in found])
            path.unlink(missing_ok=True)
        read, added = read + len(found), added + new
        if not quiet or new != len(found):
            logger.info("ingested {} ({} records, {} new)", path.name, len(found), new)
    return read, added


class Ledger:
    """Buffer, write-ahead log and flusher of one process."""

    def __init__(
        self,
        engine: AsyncEngine,
        wal_dir: Path,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        fsync: bool = False,
        writes_database: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._dir = wal_dir
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._fsync = fsync
        self.writes_database = writes_database
        self._clock = clock
        self.buffer: list[UsageRecord] = []
        self._inflight = 0  # records taken by a flush whose commit has not finished
        self._aside: list[Path] = []  # renamed WAL files whose records are not committed yet
        self._fd = -1
        self._path = Path()
        self._seq = 0
        self._wake = asyncio.Event()
        self.last_flush_ms: float | None = None
        self.last_db_write: datetime | None = None
        self.db_ok = True
        self.recorded = 0

    # -- the request path ----------------------------------------------------------------------

    def append(self, records: list[UsageRecord]) -> None:
        """Write records to the WAL (one write) and the buffer; wake the flusher when full."""
        data = encode(records)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if self._fsync:
            os.fsync(self._fd)
        self.buffer.extend(records)
        self.recorded += len(records)
        if len(self.buffer) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records not committed yet: buffered, or in a flush still running."""
        return len(self.buffer) + self._inflight

    @property
    def wal_size_bytes(self) -> int:
        """Bytes not yet committed: this process's WAL files; with an external writer, every WAL
        file in the directory (sealed files wait for the writer, whoever wrote them)."""
        paths = self._dir.glob("wal-*") if not self.writes_database else (*self._aside, self._path)
        total = 0
        for path in paths:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open this process's WAL file (locked while it lives); `replay` once the schema is up."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._open_wal()

    async def close(self) -> None:
        """Flush what is buffered; the WAL file goes only if the flush committed (with an external
        writer: the last file is sealed for it)."""
        await self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if not self.buffer and not self._aside:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()

    async def run(self) -> None:
        """Flush every interval, or sooner when the buffer fills."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that races its timeout, and this loop then outlived shutdown (seen with 2 workers).
            try:
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    # -- flushing ------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Commit the buffer; the WAL is truncated (its file deleted) only after the commit.

        With an external writer: seal the WAL file for it instead (no database work here)."""
        if not self.buffer:
            return 0
        batch, self.buffer = self.buffer, []
        if not self.writes_database:
            self._rotate(SEALED)
            self._aside.clear()  # the writer owns sealed files now
            return len(batch)
        self._rotate(".flushing")
        started = self._clock()
        self._inflight = len(batch)
        try:
            await ledger_db.insert_records(self._engine, [r.to_row() for r in batch])
        except DB_ERRORS as exc:
            if self.db_ok:
                logger.error(
                    "ledger flush failed ({}); {} records kept in the WAL and retried",
                    type(exc).__name__,
                    len(batch),
                )
            self.db_ok = False
            self.buffer = batch + self.buffer
            return 0
        finally:
            self._inflight = 0
        self.db_ok = True
        self.last_flush_ms = round((self._clock() - started) * 1000, 1)
        self.last_db_write = datetime.now(UTC)
        for path in self._aside:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._aside.clear()
        return len(batch)

    async def replay(self) -> int:
        """Insert the records of every unowned WAL file in the directory, then delete it."""
        _, added = await ingest_unowned(self._engine, self._dir, skip={self._path, *self._aside})
        return added

    def _open_wal(self) -> None:
        self._seq += 1
        self._path = self._dir / f"wal-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Held for the life of the file: replay skips files a live process holds.
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _rotate(self, suffix: str) -> None:
        aside = self._path.with_suffix(f".{self._seq}{suffix}")
        os.rename(self._path, aside)
        os.close(self._fd)
        self._aside.append(aside)
        self._open_wal()
