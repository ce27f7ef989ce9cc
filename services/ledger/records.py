"""A usage record and its WAL line: the record (one request, upstream attempt or external usage),
its time-ordered id, and the framing that lets a reader skip a torn line without losing the next.

Each line is `<crc32 in hex> <json>`. A write cut short leaves a partial line; the ledger then
starts its next write with a newline (services/ledger/wal.py), so the partial line stands alone and
`decode` skips it with a warning, as it skips a line whose checksum fails. Lines written before
framing (bare JSON) are still read.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from loguru import logger


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
    api_key_id: str | None = None  # the caller's key id (services/api/auth.py), never the key

    def to_row(self) -> dict[str, Any]:
        """The database row (UTC timestamp and day)."""
        row = {name: getattr(self, name) for name in RECORD_FIELDS}
        when = datetime.fromtimestamp(self.ts, UTC)
        row["ts"], row["day"] = when, when.date()
        return row


RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))


def frame(payload: bytes) -> bytes:
    """One WAL line: the payload's CRC-32 in hex, a space, the payload, a newline."""
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def encode(records: list[UsageRecord]) -> bytes:
    """WAL lines: one framed JSON object per record."""
    return b"".join(frame(orjson.dumps(r, option=orjson.OPT_SERIALIZE_DATACLASS)) for r in records)


def unframe(line: bytes) -> bytes | None:
    """The payload of a framed line, None when its checksum fails (a torn or corrupt line).
    Lines written before framing (bare JSON) are taken as they are."""
    if line[:1] == b"{":
        return line
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        expected = int(line[:8], 16)
    except ValueError:
        return None
    payload = line[9:]
    return payload if zlib.crc32(payload) == expected else None


def decode(raw: bytes, source: Path) -> list[UsageRecord]:
    """Records from WAL bytes; a torn line (a write cut short, a power cut) is skipped with a
    warning, and cannot have swallowed the record after it (see `Ledger._write`)."""
    out = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        payload = unframe(line)
        try:
            found = None if payload is None else UsageRecord(**orjson.loads(payload))
        except (orjson.JSONDecodeError, TypeError):
            found = None
        if found is None:
            logger.warning("skipping a torn or unreadable line ({} of {})", number, source)
        else:
            out.append(found)
    return out
