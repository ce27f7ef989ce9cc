"""Logs: seed format, request ids, JSON lines, redaction, rotation shared by several writers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from loguru import logger

from services.config import LogSettings
from services.platform.logs import AccessLog, SharedFileSink, configure_logging
from services.platform.redis_connection import free_port
from services.platform.request_context import request_id_var
from tests.helpers import SimProcess, api_process, healthy, http, single_model_config, wait_until


def test_lines_have_the_seed_format_and_request_id(tmp_path: Path) -> None:
    """time | level | module:function:line - [request id] message, with secrets replaced."""
    configure_logging(
        "t", LogSettings(dir=str(tmp_path)), secrets=["sk-live-abcdef"], console=False
    )
    token = request_id_var.set("req-7")
    logger.info("calling upstream with key sk-live-abcdef")
    request_id_var.reset(token)
    logger.complete()
    line = (tmp_path / "t.log").read_text().splitlines()[-1]
    date, level, where = line.split(" | ", 2)
    time.strptime(date, "%Y-%m-%d %H:%M:%S.%f")
    assert level.strip() == "INFO"
    assert where.startswith(
        "tests.platform.test_logs:test_lines_have_the_seed_format_and_request_id:"
    )
    assert where.endswith("- [req-7] calling upstream with key ***")
    logger.remove()


def test_json_lines_are_flat_and_match_access_lines(tmp_path: Path) -> None:
    """With json on, loguru lines and access lines are one JSON object each, with the same keys."""
    sink = configure_logging("j", LogSettings(dir=str(tmp_path), json=True), console=False)
    logger.warning("disk {} full", "/var")
    AccessLog(sink, json_lines=True).request("rid-1", "POST", "/x", 200, 1.25, "m")
    logger.remove()
    first, second = (json.loads(line) for line in (tmp_path / "j.log").read_text().splitlines())
    assert first["message"] == "disk /var full" and first["level"] == "WARNING"
    assert second["request_id"] == "rid-1" and second["status"] == 200 and second["model"] == "m"
    assert {"time", "level", "name", "request_id", "message"} <= set(first) & set(second)


def test_rotation_by_one_writer_is_followed_by_the_others(tmp_path: Path) -> None:
    """Two writers (as two worker processes) share one file: one rotates, the other reopens."""
    path = tmp_path / "api.log"
    first = SharedFileSink(path, max_bytes=10_000, retention_days=7)
    second = SharedFileSink(path, max_bytes=10_000, retention_days=7)
    line = "x" * 99 + "\n"
    for _ in range(700):  # 70 kB through the first writer: it rotates at least once
        first.write(line)
    second._maybe_rotate()  # what the second writer does on its next periodic check
    second.write("from-second\n")
    rotated = sorted(tmp_path.glob("api.*.log"))
    assert rotated, "the first writer should have rotated"
    assert path.read_text().endswith("from-second\n")
    assert all(p.stat().st_size >= 10_000 for p in rotated)
    first.close()
    second.close()


def test_retention_removes_old_rotated_files(tmp_path: Path) -> None:
    """Rotated files older than the retention are deleted at the next rotation."""
    old = tmp_path / "api.2000-01-01_00-00-00_000000.log"
    old.write_text("old\n")
    os.utime(old, (0, 0))
    recent = tmp_path / "api.2099-01-01_00-00-00_000000.log"
    recent.write_text("recent\n")
    sink = SharedFileSink(tmp_path / "api.log", max_bytes=10_000, retention_days=7)
    for _ in range(700):
        sink.write("y" * 99 + "\n")
    sink.close()
    assert not old.exists() and recent.exists()


def test_a_real_server_writes_exactly_one_line_per_request(
    tmp_path: Path, redis_url: str, primary: SimProcess
) -> None:
    """`main.py api` (uvicorn, stdlib logging routed to loguru): one access line per request,
    not ours plus uvicorn's."""
    config = single_model_config(tmp_path, redis_url, primary)
    port = free_port()
    proc = api_process(config, {}, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(base + "/livez"), timeout=60, what="api")
        turn = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert http("POST", base + "/v1/chat/completions", turn)[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
    lines = (tmp_path / "logs" / "api_server.log").read_text().splitlines()
    assert len([line for line in lines if "/v1/chat/completions" in line]) == 3
