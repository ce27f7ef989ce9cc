"""The log-growth signal survives rotation; counter rates survive a reset."""

from __future__ import annotations

import os
from pathlib import Path

from services.capacity.signals import LogSample, log_growth, rate, sample_log


def append(path: Path, count: int) -> None:
    with path.open("ab") as f:
        f.write(b"x" * count)


def test_growth_between_samples_of_the_same_file(tmp_path: Path) -> None:
    log = tmp_path / "api_server.log"
    first = sample_log(log, None)
    assert first == LogSample(None, 0) and log_growth(None, first) == 0
    append(log, 300)
    second = sample_log(log, first.inode)
    assert log_growth(first, second) == 300, "a file that appears counts whole"
    append(log, 1200)
    third = sample_log(log, second.inode)
    assert log_growth(second, third) == 1200


def test_rotation_does_not_look_like_a_traffic_drop(tmp_path: Path) -> None:
    """loguru renames the full file and starts a new one: the growth is the old file's tail
    plus the whole new file, found by the old inode."""
    log = tmp_path / "api_server.log"
    append(log, 5000)
    before = sample_log(log, None)
    append(log, 700)  # written after the sample, before the rotation
    os.rename(log, tmp_path / "api_server.2026-11-22_01-00-00.log")
    append(log, 900)  # the fresh file
    after = sample_log(log, before.inode)
    assert after.inode != before.inode and after.previous_file_size == 5700
    assert log_growth(before, after) == 700 + 900


def test_rotated_file_deleted_counts_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "api_server.log"
    append(log, 5000)
    before = sample_log(log, None)
    os.rename(log, tmp_path / "old.log")
    (tmp_path / "old.log").unlink()  # retention removed (or compressed) it
    append(log, 400)
    after = sample_log(log, before.inode)
    assert after.previous_file_size is None and log_growth(before, after) == 400


def test_truncation_in_place_counts_what_is_there_now(tmp_path: Path) -> None:
    log = tmp_path / "api_server.log"
    append(log, 5000)
    before = sample_log(log, None)
    log.write_bytes(b"y" * 100)  # copytruncate-style: same inode, smaller
    after = sample_log(log, before.inode)
    assert after.inode == before.inode and log_growth(before, after) == 100


def test_rate_of_a_counter() -> None:
    assert rate(None, 500, 10) == 0.0, "no previous reading: no rate yet"
    assert rate(100, 600, 10) == 50.0
    assert rate(600, 30, 10) == 3.0, "a reset counter (Redis flushed) counts from zero"
