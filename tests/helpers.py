"""Real servers for tests: simulated model servers as processes, the gateway on real uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn
import yaml
from fastapi import FastAPI

from services.config import DEFAULT_CONFIG_PATH, Settings
from services.ledger.db import make_engine, records
from services.platform.redis_connection import free_port

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")


class FakeClock:
    """A clock the test moves (`now`), for time-based logic: no test sleeps to let time pass."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def http(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """A plain HTTP call that returns (status, headers, body) for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-Type" not in req.headers:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_until(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    """Poll a readiness condition (not a sleep standing in for time passing)."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(url: str) -> bool:
    try:
        return http("GET", url, timeout=1)[0] == 200
    except OSError:
        return False


class SimProcess:
    """A simulated model server in its own process, controlled over HTTP."""

    def __init__(self, name: str, *, cold_start: float = 0.0) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, MAIN, "simulate", "--port", str(self.port), "--model-name", name,
                "--latency-ms", "0", "--tokens-per-second", "1000000",
                "--cold-start-seconds", str(cold_start)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if cold_start == 0:
            wait_until(lambda: healthy(self.base + "/health"), what=f"simulator {name}")

    @property
    def openai_url(self) -> str:
        return self.base + "/v1"

    def behave(self, **changes: Any) -> None:
        status, _, body = http("POST", self.base + "/_sim/behaviour", changes)
        assert status == 200, body

    def reset(self) -> None:
        assert http("POST", self.base + "/_sim/reset", {})[0] == 200

    def stats(self) -> dict[str, Any]:
        return json.loads(http("GET", self.base + "/_sim/stats")[2])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # a handler still hanging on purpose may hold up a clean exit
            self.proc.wait(10)


class GatewayServer:
    """The gateway app on a real uvicorn server in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        wait_until(lambda: self.server.started, what="gateway start")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def settings_for(
    redis_url: str, log_dir: Path, models: dict[str, Any], chains: dict[str, Any] | None = None,
    **sections: Any,
) -> Settings:  # fmt: skip
    """Settings for a test gateway."""
    data: dict[str, Any] = {
        "redis": {"url": redis_url},
        "log": {"dir": str(log_dir)},
        "models": models,
        "chains": chains or {},
        "sessions": {"default_selector": next(iter(chains or models))},
        # Each test gateway has its own ledger database and WAL directory.
        "database": {"url": f"sqlite+aiosqlite:///{log_dir.parent / 'ledger.db'}"},
        "ledger": {"wal_dir": str(log_dir.parent / "wal"), "flush_interval_seconds": 0.2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return Settings.model_validate(data)


def openai_model(url: str, upstream: str = "sim", **extra: Any) -> dict[str, Any]:
    return {"deployments": [{"provider": "openai", "base_url": url, "model": upstream, **extra}]}


def single_model_config(
    tmp_path: Path, redis_url: str, upstream: SimProcess, **sections: Any
) -> Path:
    """A config file for `main.py api`: one model `primary` on `upstream`, no active probes."""
    config: dict[str, Any] = {
        "redis": {"url": redis_url},
        "log": {"dir": str(tmp_path / "logs")},
        "models": {"primary": openai_model(upstream.openai_url, "p")},
        "sessions": {"default_selector": "primary"},
        "resilience": {"health": {"enabled": False}},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def isolated_ledger_env(directory: Path) -> dict[str, str]:
    """FR_ variables giving a process its own ledger database and WAL under `directory`."""
    return {
        "FR_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'ledger.db'}",
        "FR_LEDGER_WAL_DIR": str(directory / "wal"),
    }


def recorded_request_ids(database_url: str) -> list[str]:
    """The request ids of every chat turn the ledger database holds (a repeated id is a double
    record)."""

    async def read() -> list[str]:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = sa.select(records.c.request_id).where(records.c.kind == "request")
                return [row[0] for row in await conn.execute(query)]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def without_file_override() -> list[str]:
    """A command prefix under which file permissions hold even for root: the capabilities that
    override them are dropped (for a non-root user they hold anyway)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def api_process(
    config: Path, env: Mapping[str, str], port: int, workers: int = 1, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`main.py api` as a real process (its ledger next to the config unless `env` says), run
    through `prefix` if given (e.g. `without_file_override()`)."""
    return subprocess.Popen(
        [*prefix, sys.executable, MAIN, "api", "--config", str(config), "--port", str(port),
         "--workers", str(workers)],
        # No drain delay unless a test asks: every terminate() would otherwise wait for it.
        env={**os.environ, "FR_API_DRAIN_DELAY_SECONDS": "0", **isolated_ledger_env(config.parent),
             **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def default_config_on_free_ports(tmp_path: Path) -> tuple[Path, int]:
    """The shipped default config, unchanged but for ports (CI may have 8000/9101 taken)."""
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    api_port = free_port()
    config["api"]["port"] = api_port
    config["log"]["dir"] = str(tmp_path / "logs")
    for model in config["models"].values():
        for deployment in model["deployments"]:
            deployment["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, api_port


def start_main_all(
    tmp_path: Path, path_env: str, **extra_env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`main.py all` on the shipped config (free ports), with `PATH` = `path_env` (no
    redis-server on it: the embedded fakeredis); returns the process and the API's base URL."""
    config, api_port = default_config_on_free_ports(tmp_path)
    env = {
        **os.environ,
        "PATH": path_env,
        "FR_CONFIG": str(config),
        "FR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing answers: embedded Redis
        **isolated_ledger_env(tmp_path),
        **extra_env,
    }
    console = tmp_path / "main-all.console"
    with console.open("wb") as out:
        proc = subprocess.Popen([sys.executable, MAIN, "all"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(
            lambda: http("GET", base + "/readyz", timeout=1)[0] == 200, timeout=60, what="readyz"
        )
    except AssertionError as exc:
        # Stop it (a launcher left running would hold its children and ports for the rest of
        # the session) and say why it never became ready: its console and every log's tail.
        interrupt(proc)
        raise AssertionError(f"{exc}; exit {proc.returncode}\n{log_tails(tmp_path)}") from None
    return proc, base


def log_tails(directory: Path, lines: int = 15) -> str:
    """The last lines of every log under `directory`, for a failure message."""
    tails = []
    for path in sorted([*directory.glob("*.console"), *directory.glob("logs/**/*.log")]):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path.relative_to(directory)}\n" + "\n".join(text))
    return "\n".join(tails) or f"(no logs under {directory})"


def readme_blocks() -> list[tuple[str, str]]:
    """The README's fenced code blocks, as (language, text), in order."""
    blocks, language, lines = [], None, []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines) + "\n"))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def interrupt(proc: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """Ctrl-C a launcher and wait for it; kill it if it does not stop. Its exit code, or None
    when it had to be killed."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
