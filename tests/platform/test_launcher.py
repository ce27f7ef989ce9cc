"""`main.py all` on embedded defaults: starts everything, serves completions, leaves no process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from tests.helpers import (
    MAIN,
    http,
    isolated_ledger_env,
    recorded_request_ids,
    start_main_all,
    wait_until,
)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serves_a_completion(base: str) -> None:
    session = json.loads(http("POST", base + "/initiate_call", {})[2])
    wait_until(
        lambda: http("POST", base + "/chat_completions", {"session_id": session["session_id"], "message": "hi"})[0] == 200,
        what="a completion from the simulated models",
    )  # fmt: skip
    status, headers, raw = http(
        "POST", base + "/chat_completions", {"session_id": session["session_id"], "message": "hi"}
    )
    assert status == 200 and headers["x-router-model"] == "large-model"
    assert json.loads(raw)["choices"][0]["message"]["content"].startswith("[large-model]")


REDIS_MODES = [
    pytest.param(os.environ.get("PATH", ""), "redis-server", id="redis-server",
                 marks=pytest.mark.skipif(not shutil.which("redis-server"), reason="no redis-server binary")),
    pytest.param("/nonexistent", "fakeredis", id="fakeredis"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("path_env", "mode"), REDIS_MODES)
def test_all_serves_and_ctrl_c_leaves_nothing(tmp_path: Path, path_env: str, mode: str) -> None:
    """Ctrl-C (SIGINT) stops the API, simulators, health checker and embedded Redis; exit 0."""
    proc, base = start_main_all(tmp_path, path_env)
    try:
        _serves_a_completion(base)
        family = _descendants(proc.pid)
        assert len(family) >= 4  # two simulators, api, redis-health (+ redis-server)
        launcher_log = (tmp_path / "logs" / "launcher.log").read_text()
        assert ("redis-server" if mode == "redis-server" else "fakeredis") in launcher_log
        assert "started capacity" in launcher_log, "the default config runs the planner"
        wait_until(lambda: json.loads(http("GET", base + "/health")[2])["planner"]["up"],
                   what="the planner's state to reach the API")  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not [pid for pid in family if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_the_planner_keeps_acting_on_the_embedded_fakeredis(tmp_path: Path) -> None:
    """No redis-server binary: `main.py all` serves on fakeredis, and the planner (ticking every
    second here) keeps renewing its lock and publishing its state, tick after tick, without a
    "Redis unreachable" (its Lua scripts used to fail there after the first tick); after Ctrl-C
    the ledger holds every answered request once."""
    proc, base = start_main_all(tmp_path, "/nonexistent", FR_CAPACITY_INTERVAL_SECONDS="1")
    try:
        _serves_a_completion(base)
        launcher_log = (tmp_path / "logs" / "launcher.log").read_text()
        url = re.search(r"fakeredis at (redis://\S+)", launcher_log)
        assert url is not None, launcher_log[-2000:]
        store = redis.Redis.from_url(url.group(1), decode_responses=True)
        seen: set[float] = set()

        def published_again() -> bool:
            raw = store.get("fr:{capacity}:state")
            if raw is not None:
                seen.add(json.loads(raw)["updated"])
            return len(seen) >= 4

        answered = []
        for _ in range(20):  # while the planner ticks on the same fakeredis
            status, headers, _ = http("POST", base + "/v1/chat/completions", {"model": "default",
                                      "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            assert status == 200
            answered.append(headers["x-request-id"])
        wait_until(published_again, timeout=30, what="four ticks' published states")
        store.close()
        capacity_log = (tmp_path / "logs" / "capacity_planning.log").read_text()
        assert "acting as the capacity planner" in capacity_log
        assert "Redis unreachable" not in capacity_log
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        ids = recorded_request_ids(isolated_ledger_env(tmp_path)["FR_DATABASE_URL"])
        assert len(ids) == len(set(ids)) and set(answered) <= set(ids), "each answer recorded once"
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_all_runs_the_external_ledger_writer_by_default(tmp_path: Path) -> None:
    """`ledger.writer: auto`: `main.py all` starts `main.py ledger` and makes its API external;
    /health sees the writer, the records reach the database through it, and after Ctrl-C no WAL
    file is left behind."""
    proc, base = start_main_all(tmp_path, os.environ.get("PATH", ""))
    try:
        _serves_a_completion(base)
        wait_until(lambda: json.loads(http("GET", base + "/health")[2])["ledger_writer"] == "running",
                   what="the writer's heartbeat")  # fmt: skip
        wait_until(lambda: json.loads(http("GET", base + "/api/llm/costs?days=1")[2])["total_requests"] >= 2,
                   what="records written by the external writer")  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped ledger-writer" in (tmp_path / "logs" / "launcher.log").read_text()
        # The writer was stopped after the API, so it ingested the file the API sealed last.
        assert list((tmp_path / "wal").glob("wal-*")) == []
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigkilled_launcher_leaves_no_orphans(tmp_path: Path) -> None:
    """Even a SIGKILLed launcher takes its children with it (they ask for PR_SET_PDEATHSIG)."""
    proc, _base = start_main_all(tmp_path, os.environ.get("PATH", ""))
    family = _descendants(proc.pid)
    proc.kill()
    proc.wait()
    wait_until(
        lambda: not [pid for pid in family if _alive(pid)], timeout=30, what="children to exit"
    )


def test_check_config_prints_effective_config_without_secrets(tmp_path: Path) -> None:
    """check-config validates, applies FR_ overrides and redacts URL passwords; bad config exits 2."""
    env = {**os.environ, "FR_API_PORT": "8123", "FR_REDIS_URL": "redis://u:topsecret@h:1/0"}
    out = subprocess.run(
        [sys.executable, MAIN, "check-config"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "valid" in out.stdout
    shown = yaml.safe_load(out.stdout)
    assert shown["api"]["port"] == 8123 and "topsecret" not in out.stdout
    bad = subprocess.run([sys.executable, MAIN, "check-config"], env={**env, "FR_API_PORT": "x"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "api.port = 'x' (from FR_API_PORT)" in bad.stderr


def test_a_silent_sentinel_url_is_refused_not_replaced_by_a_private_redis(tmp_path: Path) -> None:
    """A private standalone Redis in place of an unreachable Sentinel set would split the
    replicas' state without anyone noticing: `all` exits 1 and says why, password redacted."""
    env = {**os.environ, "FR_REDIS_URL": "redis+sentinel://:topsecret@127.0.0.1:1/fr/0",
           "FR_LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    out = subprocess.run([sys.executable, MAIN, "all"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1
    said = out.stdout + out.stderr + (tmp_path / "logs" / "launcher.log").read_text()
    assert "a private Redis is only started in place of a plain redis:// URL" in said
    assert "topsecret" not in said and "redis+sentinel://:***@127.0.0.1:1/fr/0" in said
