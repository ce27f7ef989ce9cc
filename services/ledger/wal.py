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

WAL lines are framed (`<crc32 hex> <json>`), and a write that failed part-way makes the next one
start on a fresh line, so a torn write never merges with the next record; `decode` skips a line
whose checksum fails, with a warning.

Storage faults never lose a record while the process lives (docs/ledger.md, "Fault model"):

- a WAL write that fails (full disk, I/O error) keeps the records in memory, marked unlogged, and
  the flush loop writes them again once the disk takes them;
- a directory that cannot be written (no rotation, no new file, no deletion) does not stop
  commits: the batch is inserted anyway and the files are tidied once the directory recovers
  (replay is idempotent, so a file of committed records is harmless);
- the flush loop survives any error: it logs it, backs off (up to 30 s) and retries;
- memory is bounded (`ledger.max_pending_records`): past it, records that are safe in the WAL are
  spilled (dropped from memory, their files left for replay once the database is back); when
  they are not, `ledger.when_full` decides: `refuse` new turns with 503 `ledger_full`, or
  `answer` them unrecorded, counted in `dropped`.

On start, every WAL file in `wal_dir` that no live process holds (each process keeps an flock on
its own) is replayed and deleted (services/ledger/ingest.py): the same idempotent insert makes a
second replay harmless.

With `ledger.writer: external` the flush does not touch the database: it *seals* the WAL file
(closes it, renamed `*.sealed`) and a separate process (`main.py ledger`, services/ledger/writer.py)
ingests sealed and orphaned files with the same replay. The API process then only appends and
renames, and the insert's CPU and GIL time are spent elsewhere. Such a ledger has no engine,
and this module imports the database layer only where it inserts, so an API process with an
external writer does not load SQLAlchemy for it (services/ledger/handoff.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from services.ledger.records import UsageRecord, encode

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

SEALED = ".sealed"


class Ledger:
    """Buffer, write-ahead log and flusher of one process."""

    def __init__(
        self,
        engine: AsyncEngine | None,
        wal_dir: Path,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        fsync: bool = False,
        writes_database: bool = True,
        max_pending: int = 100_000,
        when_full: str = "refuse",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if writes_database and engine is None:
            raise ValueError("a ledger that writes the database needs its engine")
        self._engine = engine
        self._dir = wal_dir
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._fsync = fsync
        self.writes_database = writes_database
        self._max_pending = max_pending
        self.when_full = when_full
        self._clock = clock
        self.buffer: list[UsageRecord] = []
        self._inflight = 0  # records taken by a flush whose commit has not finished
        self._aside: list[Path] = []  # renamed WAL files whose records are not committed yet
        # Records whose WAL write failed: in memory only until written again or committed.
        self._unlogged: dict[int, UsageRecord] = {}
        self._torn = False  # the WAL file ends mid-line: the next write starts a fresh one
        self._spilled = False  # records left in closed WAL files for replay (memory bound)
        self._fd = -1
        self._path = Path()
        self._seq = 0
        self._wake = asyncio.Event()
        self.last_flush_ms: float | None = None
        self.last_db_write: datetime | None = None
        self.db_ok = True
        self.write_error: str | None = None  # why WAL writes fail, while they do
        self.dir_error: str | None = None  # why the WAL directory refuses changes, while it does
        self.flush_error: str | None = None  # the last flush's unexpected error, until one works
        self.recorded = 0
        self.dropped = 0  # records answered unrecorded (`when_full: answer`), or lost at exit

    # -- the request path ----------------------------------------------------------------------

    def append(self, records: list[UsageRecord]) -> None:
        """Write records to the WAL (one write) and the buffer; wake the flusher when full.

        A failed WAL write keeps them in memory (unlogged) and never raises: the answer they
        describe has been given, and the flush loop writes them again or commits them."""
        if self.full and self.when_full == "answer" and not self._spill():
            self.dropped += len(records)
            if self.dropped == len(records) or self.dropped % 1000 < len(records):
                logger.error("ledger full ({} records waiting): {} answered requests unrecorded",
                             self.pending, self.dropped)  # fmt: skip
            return
        if not self._write(encode(records)):
            for record in records:
                self._unlogged[id(record)] = record
        self.buffer.extend(records)
        self.recorded += len(records)
        if len(self.buffer) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records not committed yet: buffered, or in a flush still running."""
        return len(self.buffer) + self._inflight

    @property
    def unlogged(self) -> int:
        """Records held only in memory (their WAL write failed)."""
        return len(self._unlogged)

    @property
    def full(self) -> bool:
        """Whether memory holds `max_pending` records waiting for the database, counting those a
        flush under way has taken (they return to the buffer if it fails: counted only in the
        buffer, records appended meanwhile went past the bound)."""
        return self.pending >= self._max_pending

    def refuses_new_turns(self) -> bool:
        """Whether a new turn must be refused: full, `when_full: refuse`, and nothing could be
        spilled. (Turns already under way are still recorded: the bound is exceeded by at most
        the turns in flight.)"""
        return self.when_full == "refuse" and self.full and not self._spill()

    def problem(self) -> str | None:
        """What keeps the ledger from being healthy, or None."""
        if self.full:
            return f"full: {self.pending} records waiting" + (
                ", new requests refused" if self.when_full == "refuse" else ", answering unrecorded"
            )
        wal_error = self.write_error or self.dir_error
        if self._unlogged:
            return f"{len(self._unlogged)} records only in memory (WAL: {wal_error})"
        if wal_error is not None:
            return f"WAL: {wal_error}"
        if not self.db_ok:
            return "database unreachable: records wait in the WAL"
        if self.flush_error is not None:
            return f"flush failing: {self.flush_error}"
        return None

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
        """Open this process's WAL file (locked while it lives); `replay` once the schema is up.

        A directory that cannot be made or written does not stop the process: records are kept
        in memory and the flush loop keeps trying (`problem` says why)."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._open_wal()
        except OSError as exc:
            self.dir_error = self._wal_failed(exc, self.dir_error)

    async def close(self) -> None:
        """Flush what is buffered; the WAL file goes only if the flush committed (with an external
        writer: the last file is sealed for it). Records that reached neither the database nor a
        file are reported as lost."""
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - shutting down: report, then count what is left
            logger.exception("last ledger flush failed")
        if self._unlogged:
            self._heal()
        if self._unlogged:
            self.dropped += len(self._unlogged)
            logger.error("{} ledger records reached neither the database nor the WAL ({}): lost",
                         len(self._unlogged), self.write_error or self.dir_error)  # fmt: skip
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if not self.buffer and not self._aside and not self._spilled:
                with contextlib.suppress(OSError):
                    self._path.unlink()

    async def run(self) -> None:
        """Flush every interval, or sooner when the buffer fills; any error is logged and the
        flush retried with backoff (up to 30 s), so the loop never dies."""
        failures = 0
        while True:
            delay = min(self._flush_interval * 2**failures, 30.0)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that races its timeout, and this loop then outlived shutdown (seen with 2 workers).
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                error = f"{type(exc).__name__}: {exc}"
                if error != self.flush_error:
                    logger.exception("ledger flush failed; retrying with backoff")
                self.flush_error = error
                failures = min(failures + 1, 16)
            else:
                if self.flush_error is not None:
                    logger.info("ledger flush works again")
                self.flush_error = None
                failures = 0

    # -- flushing ------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Commit the buffer; the WAL is truncated (its file deleted) only after the commit.

        With an external writer: seal the WAL file for it instead (no database work here)."""
        self._heal()
        if self._spilled and self.writes_database and await self._ingest_spilled() is None:
            return 0
        if not self.buffer:
            self._delete_committed()
            return 0
        if not self.writes_database:
            return self._seal()
        from services.ledger import db as ledger_db  # loaded by the engine already: no cost

        engine = self._database()
        batch, self.buffer = self.buffer, []
        rotated = self._try_rotate(".flushing")
        started = self._clock()
        self._inflight = len(batch)
        try:
            rows = await ledger_db.map_yielding(lambda record: record.to_row(), batch)
            await ledger_db.insert_records(engine, rows)
        except BaseException as exc:
            self.buffer = batch + self.buffer
            if not isinstance(exc, ledger_db.DB_ERRORS):
                raise
            if self.db_ok:
                logger.error("ledger flush failed ({}); {} records kept in the WAL and retried",
                             type(exc).__name__, len(batch))  # fmt: skip
            self.db_ok = False
            return 0
        finally:
            self._inflight = 0
        self.db_ok = True
        self.last_flush_ms = round((self._clock() - started) * 1000, 1)
        self.last_db_write = datetime.now(UTC)
        for record in batch:
            self._unlogged.pop(id(record), None)
        if rotated:  # otherwise the current file holds committed records until a rotation works
            self._delete_committed()
        return len(batch)

    def _seal(self) -> int:
        """External writer: hand the current WAL file to it. Records only in memory stay in the
        buffer until a WAL file holds them."""
        if self._unlogged or not self._try_rotate(SEALED):
            return 0
        self._aside.clear()  # the writer owns sealed files now
        sealed, self.buffer = len(self.buffer), []
        return sealed

    async def replay(self) -> int:
        """Insert the records of every unowned WAL file in the directory, then delete it."""
        from services.ledger.ingest import ingest_unowned

        skip = {self._path, *self._aside}
        _, added = await ingest_unowned(self._database(), self._dir, skip=skip)
        return added

    def _database(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("this ledger has no database: an external writer inserts for it")
        return self._engine

    async def _ingest_spilled(self) -> int | None:
        """Commit the files spilled out of memory; None while the database is down."""
        from services.ledger.db import DB_ERRORS

        try:
            added = await self.replay()
        except DB_ERRORS as exc:
            if self.db_ok:
                logger.error("ledger database unreachable ({})", type(exc).__name__)
            self.db_ok = False
            return None
        self._spilled = False
        self.db_ok = True
        return added

    # -- the WAL file --------------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        """Append `data` to the WAL; False (`write_error` set) when it could not all be written."""
        if self._fd < 0:
            return False
        if self._torn:
            data = b"\n" + data  # the file ends mid-line: never merge with it
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._torn = self._torn or written > 0
            self.write_error = self._wal_failed(exc, self.write_error)
            return False
        self._torn = False
        if self.write_error is not None and not self._unlogged:
            logger.info("the ledger's WAL is writable again")
            self.write_error = None
        return True

    def _heal(self) -> None:
        """Reopen a WAL file if there is none, and write the records only memory holds."""
        if self._fd < 0:
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._open_wal()
            except OSError as exc:
                self.dir_error = self._wal_failed(exc, self.dir_error)
                return
        if self._unlogged and self._write(encode(list(self._unlogged.values()))):
            logger.info("{} ledger records held in memory are in the WAL again",
                        len(self._unlogged))  # fmt: skip
            self._unlogged.clear()
            self.write_error = None

    def _wal_failed(self, exc: OSError, previous: str | None) -> str:
        """Log a WAL failure once per distinct error; answer its description."""
        error = f"{exc.strerror or type(exc).__name__} ({self._dir})"
        if error != previous:
            logger.error("ledger WAL: {}; records are kept in memory (and in the database once "
                         "committed) until it recovers", error)  # fmt: skip
        return error

    def _open_wal(self) -> None:
        self._seq += 1
        path = self._dir / f"wal-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Held for the life of the file: replay skips files a live process holds.
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd, self._path, self._torn = fd, path, False

    def _try_rotate(self, suffix: str) -> bool:
        """Move the current WAL file aside and open a fresh one; False if the directory refused
        (the records stay in the current file, which is still appended to)."""
        if self._fd < 0:
            return False
        aside = self._path.with_suffix(f".{self._seq}{suffix}")
        try:
            os.rename(self._path, aside)
        except OSError as exc:
            self.dir_error = self._wal_failed(exc, self.dir_error)
            return False
        os.close(self._fd)
        self._fd = -1
        self._aside.append(aside)
        try:
            self._open_wal()
        except OSError as exc:  # no new file: appends are kept in memory until one opens
            self.dir_error = self._wal_failed(exc, self.dir_error)
            return True
        if self.dir_error is not None:
            logger.info("the ledger's WAL directory takes changes again")
            self.dir_error = None
        return True

    def _delete_committed(self) -> None:
        """Delete the set-aside files whose records are all committed (kept if the directory
        refuses: replay is idempotent, and a later flush tries again)."""
        kept = []
        for path in self._aside:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                kept.append(path)
        self._aside = kept

    def _spill(self) -> bool:
        """Make room in memory: when every buffered record is safe in a WAL file, leave those
        files for replay and drop the records from memory. False when it cannot."""
        if not self.writes_database or self._unlogged or self._inflight:
            return False
        if not self._try_rotate(".spilled"):
            return False
        logger.warning("ledger memory bound reached: {} records left in the WAL for replay "
                       "once the database is back", len(self.buffer))  # fmt: skip
        self._aside.clear()  # closed and unlocked: `replay` takes them
        self.buffer = []
        self._spilled = True
        return True
