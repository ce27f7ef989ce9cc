"""The capacity planner end to end: `main.py api` and `main.py capacity` as real processes, the
`process` scaler starting real simulated model servers with short cold starts, real Redis.

load rises -> the small model comes up first and new sessions are pinned to it while the large
one warms -> the large replica is SIGKILLed while it warms and replaced after its backoff -> the
large one is ready and new sessions go back to it, old ones keep their pin -> load falls -> the
replicas are drained and stopped; no client request fails at any point, and after the API stops
its ledger holds every answered request exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from services.capacity.state import PublishedState, keys
from services.platform.redis_connection import free_port
from tests.helpers import (
    MAIN,
    SimProcess,
    api_process,
    healthy,
    http,
    isolated_ledger_env,
    recorded_request_ids,
    wait_until,
)


def planner_config(tmp_path: Path, redis_url: str, static_large: SimProcess) -> Path:
    def scaler(startup: float) -> dict[str, Any]:
        return {"kind": "process", "startup_seconds": startup, "stop_grace_seconds": 5}

    config = {
        "redis": {"url": redis_url},
        "log": {"dir": str(tmp_path / "logs"), "level": "DEBUG"},
        "models": {
            # The large model's always-on deployment; the small model exists only as replicas.
            "large-model": {
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "large-model",
                        "base_url": static_large.openai_url,
                    }
                ]
            },
            "small-model": {"deployments": []},
        },
        "chains": {
            "default": ["large-model", "small-model"],
            "low-cost": ["small-model", "large-model"],
        },
        "sessions": {"default_selector": "default"},
        "resilience": {"health": {"enabled": False}, "sync_interval_seconds": 0.1},
        "ledger": {"flush_interval_seconds": 0.2},
        "capacity": {
            "enabled": True,
            "interval_seconds": 0.5,
            "signal": "request_rate",
            # Scale-up above 15 requests/s; the polls below stay well under it.
            "request_rate_threshold": 15,
            "scale_up_ticks": 2,
            "scale_down_ticks": 4,
            "quiet_window_seconds": 1.5,
            "drain_seconds": 1.0,
            "large": {"model": "large-model", "session_selector": "default", "scaler": scaler(4.0)},
            "small": {
                "model": "small-model",
                "session_selector": "low-cost",
                "scaler": scaler(1.0),
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Clients:
    """Threads sending chat turns as fast as they are answered; every status is kept."""

    def __init__(self, base: str, sessions: list[str]) -> None:
        self.base = base
        self.sessions = sessions
        self.statuses: list[int] = []
        self.models: list[str] = []
        self.answered: list[str] = []  # request ids of the 200s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(s,)) for s in sessions]

    def run(self, session: str) -> None:
        while not self.stop.is_set():
            status, headers, _ = http("POST", self.base + "/chat_completions",
                                      {"session_id": session, "message": "hi"})  # fmt: skip
            with self.lock:
                self.statuses.append(status)
                self.models.append(headers.get("x-router-model", ""))
                if status == 200:
                    self.answered.append(headers["x-request-id"])

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.slow
def test_small_model_hides_the_large_models_cold_start_and_nothing_fails(
    tmp_path: Path, redis_url: str
) -> None:
    static_large = SimProcess("large-model")
    config = planner_config(tmp_path, redis_url, static_large)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = api_process(config, {}, port)
    planner = subprocess.Popen([sys.executable, MAIN, "capacity", "--config", str(config)],
                               env=dict(os.environ), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    store = redis.Redis.from_url(redis_url)
    statuses: list[int] = []
    answered: list[str] = []

    def state() -> PublishedState | None:
        return PublishedState.parse(store.get(keys("fr:")["state"]))

    def api_target() -> str:
        return str(json.loads(http("GET", base + "/health")[2])["planner"]["target"])

    def initiate() -> tuple[str, str]:
        status, _, body = http("POST", base + "/initiate_call", {})
        assert status == 200, body
        data = json.loads(body)
        return data["session_id"], data["model"]

    def turn(session: str) -> str:
        status, headers, body = http("POST", base + "/chat_completions",
                                     {"session_id": session, "message": "hi"})  # fmt: skip
        statuses.append(status)
        assert status == 200, body
        answered.append(headers["x-request-id"])
        return headers["x-router-model"]

    def planner_log() -> str:
        return (tmp_path / "logs" / "capacity_planning.log").read_text()

    try:
        wait_until(lambda: healthy(base + "/readyz"), timeout=30, what="api")
        wait_until(lambda: state() is not None, timeout=30, what="the planner's first state")
        early, early_selector = initiate()
        assert early_selector == "default" and turn(early) == "large-model"

        # Load rises: four clients as fast as they can go.
        load_sessions = [initiate()[0] for _ in range(4)]
        with Clients(base, load_sessions) as clients:
            wait_until(lambda: (s := state()) is not None and s.target_selector == "low-cost",
                       timeout=60, what="small model ready while the large one warms")  # fmt: skip
            warming = state()
            assert warming is not None
            assert warming.models["large-model"].state == "starting"
            assert warming.models["small-model"].state == "ready"
            wait_until(lambda: api_target() == "low-cost", what="the API to read the state")
            during_warmup, selector = initiate()
            assert selector == "low-cost", "new sessions go to the small model"
            wait_until(lambda: turn(during_warmup) == "small-model",
                       what="the small replica answering")  # fmt: skip

            # The large replica dies while it warms: the planner starts another after the
            # backoff (2 s by default) and the model stays "starting" until that one is ready.
            started = re.search(r"started large-model replica on port \d+ \(pid (\d+)\)",
                                planner_log())  # fmt: skip
            assert started is not None
            os.kill(int(started.group(1)), signal.SIGKILL)
            wait_until(lambda: "large-model replica exited with code -9; replacing it in 2s"
                       in planner_log(), what="the planner to see the dead replica")  # fmt: skip

            wait_until(lambda: (s := state()) is not None and s.target_selector == "default",
                       timeout=60, what="large model ready")  # fmt: skip
            assert state().models["large-model"].state == "ready"  # type: ignore[union-attr]
            wait_until(lambda: api_target() == "default", what="the API to read the state")
            after_warmup, selector = initiate()
            assert selector == "default", "new sessions back on the large model"
            assert turn(after_warmup) == "large-model"
            assert turn(during_warmup) == "small-model", "an existing session keeps its pin"
        statuses += clients.statuses
        answered += clients.answered
        assert len(clients.statuses) > 100

        # Load falls: a trickle (a turn every fourth poll, a few per second, well under the
        # threshold) on the large model's session while the planner drains and stops replicas.
        polls = iter(range(1_000_000))

        def scaled_down() -> bool:
            if next(polls) % 4 == 0:
                turn(after_warmup)
            seen = json.loads(http("GET", base + "/health")[2])["planner"]["models"]
            return all(m["state"] == "stopped" for m in seen.values())  # as the API sees it

        wait_until(scaled_down, timeout=60, what="scale-down")
        # The small model is gone; its session's chain falls through to the large model.
        assert turn(during_warmup) == "large-model"
        assert set(statuses) == {200}, f"{len([s for s in statuses if s != 200])} failures"

        health = json.loads(http("GET", base + "/health")[2])
        assert health["planner"]["up"] and health["planner"]["target"] == "default"
        assert health["planner"]["models"]["small-model"]["state"] == "stopped"
        metrics = http("GET", base + "/metrics")[2].decode()
        assert 'capacity_model_state{model="small-model",state="stopped"} 1.0' in metrics
        assert "capacity_planner_up 1.0" in metrics

        log = planner_log()
        milestones = ["scaling up", "small model ready", "new sessions now go to the small model",
                      "exited with code -9", "large model ready", "new sessions now go to the large model",
                      "scaling down", "small model drained"]  # fmt: skip
        positions = [log.find(m) for m in milestones]
        assert -1 not in positions, dict(zip(milestones, positions, strict=True))
        assert positions == sorted(positions), "the decisions happened in this order"
    finally:
        planner.terminate()
        assert planner.wait(30) == 0
        api.terminate()
        api.wait(30)
        static_large.stop()
        store.close()
    replica_logs = list((tmp_path / "logs").glob("replica-*.log"))
    assert len(replica_logs) == 3, "one small replica, and a large one started twice"
    ids = recorded_request_ids(isolated_ledger_env(tmp_path)["FR_DATABASE_URL"])
    assert len(answered) == len(statuses) > 100
    assert sorted(ids) == sorted(answered), "every answer recorded once, and nothing else"
