"""The capacity planner's load signals.

**Log growth** (the seed's signal): bytes added to the API log since the last tick. The log
rotates (loguru renames the full file and starts a new one), so a shrinking or replaced file is
not a traffic drop: the sampler remembers the file's inode, and after a rotation finds the old
file by that inode among its siblings, counting what was written to its tail plus the whole new
file. The arithmetic is `log_growth`, pure; `sample_log` is the only part that touches the disk.

**Request rate and in-flight requests**: published by the API processes in Redis
(services/capacity/state.py); the planner differences the counters between ticks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LogSample:
    """The log file at one tick."""

    inode: int | None  # None: the file does not exist (yet)
    size: int
    # After a rotation: the current size of the file that has the previous sample's inode
    # (the renamed old log), or None when it is gone (deleted or compressed).
    previous_file_size: int | None = None


def log_growth(previous: LogSample | None, current: LogSample) -> int:
    """Bytes written since `previous`; never negative, and rotation-proof."""
    if previous is None or previous.inode is None:
        return current.size if previous is not None else 0
    if current.inode == previous.inode:
        # Truncated in place (copytruncate): everything in it now is new.
        return current.size - previous.size if current.size >= previous.size else current.size
    tail = 0
    if current.previous_file_size is not None:
        tail = max(0, current.previous_file_size - previous.size)
    return tail + current.size


def sample_log(path: Path, previous_inode: int | None) -> LogSample:
    """Stat the log; after a rotation, also find the renamed old file by its inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        inode, size = None, 0
    else:
        inode, size = stat.st_ino, stat.st_size
    if previous_inode is None or inode == previous_inode:
        return LogSample(inode, size)
    old_size = None
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                if entry.is_file() and entry.inode() == previous_inode:
                    old_size = entry.stat().st_size
                    break
    except FileNotFoundError:
        pass
    return LogSample(inode, size, old_size)


def rate(previous: int | None, current: int, seconds: float) -> float:
    """Per-second rate of a monotonic counter; a reset counter (Redis flushed) counts from 0."""
    if previous is None or seconds <= 0:
        return 0.0
    delta = current - previous if current >= previous else current
    return delta / seconds
