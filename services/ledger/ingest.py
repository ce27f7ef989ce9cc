"""Files into the database: WAL files no live process holds, and the health snapshots API
processes leave for an external writer (services/ledger/handoff.py). Used by the external writer
on every pass, and by an inline API process at start (replay) and after a spill."""

from __future__ import annotations

import fcntl
from pathlib import Path

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db
from services.ledger.handoff import pending_health
from services.ledger.records import decode


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


async def ingest_health(engine: AsyncEngine, wal_dir: Path) -> int:
    """Insert every health snapshot an API process left, deleting each after its commit; the
    rows inserted. An unreadable file is deleted with a warning (it would never insert)."""
    inserted = 0
    for path, rows in pending_health(wal_dir):
        if rows is not None:
            await ledger_db.insert_health(engine, rows)
            inserted += len(rows)
        else:
            logger.warning("health snapshot {} is unreadable: deleted", path.name)
        path.unlink(missing_ok=True)
    return inserted
