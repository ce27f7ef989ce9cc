"""The files through which API processes and the external ledger writer talk, in `wal_dir`.

With `ledger.writer: external` an API process does no database work of its own while it serves
traffic, so it never loads the database layer (SQLAlchemy and a driver, about 22 MB of a worker's
memory) unless an operator asks it for a report. What it would have written or read goes through
small files next to the WAL files instead:

- `writer-status.json`, written by the writer every pass: whether it is alive, its last flush and
  database write (for `/health`), and which deployments the database records as switched off by
  an operator (so an API process can restore the switches to a Redis that lost them);
- `health-<pid>-<token>-<n>.json`, written by an API process every
  `ledger.health_snapshot_seconds`: its deployments' breaker and health rows, which the writer
  inserts and deletes.

Every file is replaced or created atomically (written aside, then renamed), so a reader never
sees half of one. This module touches no database.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

STATUS_FILE = "writer-status.json"
HEALTH_GLOB = "health-*.json"

_health_files = itertools.count()
# A process id repeats (every container's first process is pid 1): a file a restarted process
# names must not replace one its predecessor left for the writer.
_health_token = uuid.uuid4().hex[:8]


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """What the writer last did, as the API reads it."""

    pid: int
    heartbeat: float  # time.time() of the last pass
    interval_seconds: float
    db_ok: bool
    last_flush_ms: float | None = None
    last_db_write: str | None = None  # ISO 8601, UTC
    # Deployments the database records as switched off (None: not read yet, or unreadable).
    disabled: list[str] | None = field(default=None)

    def alive(self, now: float) -> bool:
        """Passes are `interval_seconds` apart; three missed ones (or 10 s) mean it is gone."""
        return now - self.heartbeat <= max(3 * self.interval_seconds, 10.0)

    @property
    def last_db_write_at(self) -> datetime | None:
        return datetime.fromisoformat(self.last_db_write) if self.last_db_write else None


def read_status(wal_dir: Path) -> WriterStatus | None:
    """The writer's last report, or None when there is none (or it is unreadable)."""
    try:
        return WriterStatus(**orjson.loads((wal_dir / STATUS_FILE).read_bytes()))
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def write_status(wal_dir: Path, status: WriterStatus) -> None:
    """Replace the status file atomically."""
    _write_atomically(wal_dir / STATUS_FILE, orjson.dumps(asdict(status)))


def write_health(wal_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Leave one health snapshot (rows of `health_snapshots`) for the writer; its path."""
    path = wal_dir / f"health-{os.getpid()}-{_health_token}-{next(_health_files)}.json"
    _write_atomically(path, orjson.dumps(list(rows)))
    return path


def pending_health(wal_dir: Path) -> Iterator[tuple[Path, list[dict[str, Any]] | None]]:
    """Every health snapshot waiting for the writer, rows ready to insert; None for an
    unreadable file, so that it is deleted rather than retried forever."""
    for path in sorted(wal_dir.glob(HEALTH_GLOB)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # another writer took it
        except OSError:
            data = b""
        yield path, _health_rows(data)


def _health_rows(data: bytes) -> list[dict[str, Any]] | None:
    try:
        rows = orjson.loads(data)
        if not isinstance(rows, list):
            return None
        for row in rows:
            row["ts"] = datetime.fromisoformat(row["ts"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return None
    return rows


def _write_atomically(target: Path, data: bytes) -> None:
    aside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    aside.write_bytes(data)
    os.replace(aside, target)
