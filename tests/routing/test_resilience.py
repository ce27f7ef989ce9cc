"""Outages against real simulated upstreams and a real Redis: what clients see, what upstreams get."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from services.app import create_app
from services.platform.redis_connection import free_port, redis_server_available, start_redis_server
from tests.helpers import (
    GatewayServer,
    SimProcess,
    api_process,
    healthy,
    http,
    openai_model,
    settings_for,
    wait_until,
)

DEADLINE = 3.0
DEGRADED = "Degraded: please retry later."


def resilient_config(redis_url: str, log_dir: Path, primary: SimProcess, secondary: SimProcess,
                     **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """Primary and secondary simulators, plus a model whose only deployment refuses connections."""
    config: dict[str, Any] = {
        "redis": {"url": redis_url, "socket_timeout_seconds": 0.3},
        "log": {"dir": str(log_dir)},
        "database": {"url": f"sqlite+aiosqlite:///{log_dir.parent / 'ledger.db'}"},
        "ledger": {"wal_dir": str(log_dir.parent / "wal")},
        "models": {
            "primary": openai_model(primary.openai_url, "primary-upstream", timeout_seconds=0.5),
            "secondary": openai_model(secondary.openai_url, "secondary-upstream"),
            "refusing": openai_model(f"http://127.0.0.1:{free_port()}/v1", "nobody"),
        },
        "chains": {
            "default": ["primary", "secondary", "cache", "degraded"],
            "refused-first": ["refusing", "secondary", "degraded"],
            "bare": ["primary", "secondary"],
        },
        "sessions": {"default_selector": "default"},
        "resilience": {
            "deadline_seconds": DEADLINE,
            "stream_ttft_seconds": 0.5,
            "degraded_message": DEGRADED,
            "retry": {"base_delay_seconds": 0.01, "max_delay_seconds": 0.05},
            "health": {"enabled": False},
        },
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    return config


@pytest.fixture
def resilient(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> Iterator[GatewayServer]:
    config = resilient_config(redis_url, tmp_path / "logs", primary, secondary)
    settings = settings_for(redis_url, tmp_path / "logs", config["models"], config["chains"],
                            redis=config["redis"], resilience=config["resilience"])  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        yield server


def turn(model: str, text: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def fire(base: str, bodies: list[dict[str, Any]], concurrency: int = 20) -> list[tuple[int, dict[str, str], bytes, float]]:  # fmt: skip
    """POST each body to /v1/chat/completions from `concurrency` threads; (status, headers, body, s)."""

    def one(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes, float]:
        started = time.monotonic()
        status, headers, raw = http("POST", base + "/v1/chat/completions", body, timeout=30)
        return status, headers, raw, time.monotonic() - started

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, bodies))


def primary_attempt_bound(elapsed: float, concurrency: int) -> int:
    """Attempts a tripping breaker can let through: the calls in flight when it trips, the five
    that trip it, and two half-open probes per (default, 5 s) open wait."""
    return concurrency + 5 + 2 * (int(elapsed / 5) + 1)


def test_thousand_requests_while_primary_returns_500(
    resilient: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """1,000 requests, primary 100 % HTTP 500: no client error, primary attempts bounded by its breaker."""
    primary.behave(failure_rate=1.0, failure_mode="status", failure_status=500)
    started = time.monotonic()
    results = fire(resilient.base, [turn("default", f"q{i}") for i in range(1000)])
    elapsed = time.monotonic() - started
    assert [r for r in results if r[0] != 200] == []
    assert {json.loads(r[2])["model"] for r in results} == {"secondary"}
    assert {r[1]["x-router-fallback"] for r in results} == {"true"}
    assert primary.stats()["requests"] <= primary_attempt_bound(elapsed, 20)
    assert secondary.stats()["requests"] == 1000
    breakers = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])
    assert breakers["circuit_breakers"]["primary:0"]["state"] in {"open", "half-open"}


def test_primary_refusing_connections_is_invisible(resilient: GatewayServer, secondary: SimProcess) -> None:  # fmt: skip
    """A deployment nobody listens on: every request answered by the next model, fast."""
    results = fire(resilient.base, [turn("refused-first", f"q{i}") for i in range(300)])
    assert [r for r in results if r[0] != 200] == []
    assert {json.loads(r[2])["model"] for r in results} == {"secondary"}
    assert secondary.stats()["requests"] == 300
    view = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert view["refusing:0"]["state"] == "open"
    # Only the calls before the trip reached the dead port (each one a refused connect).
    assert view["refusing:0"]["total_failures"] <= primary_attempt_bound(10, 20)


def test_hanging_primary_answers_within_the_deadline(
    resilient: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A primary that never answers times out per attempt; every client still gets an answer in time."""
    primary.behave(failure_rate=1.0, failure_mode="hang", hang_seconds=5)
    results = fire(resilient.base, [turn("default", f"q{i}") for i in range(200)])
    assert [r for r in results if r[0] != 200] == []
    assert {json.loads(r[2])["model"] for r in results} == {"secondary"}
    assert max(r[3] for r in results) < DEADLINE
    # Most requests did not wait for the primary at all: its breaker opened.
    assert sorted(r[3] for r in results)[100] < 0.4


def test_total_outage_serves_cache_then_degraded_and_bounds_upstream_load(
    resilient: GatewayServer, primary: SimProcess, secondary: SimProcess, redis_client: redis.Redis
) -> None:
    """All models down: a cached question is answered from cache, others get the degraded message;
    upstream attempts stay under 1.2x client requests."""
    status, _, cached_raw = http(
        "POST", resilient.base + "/v1/chat/completions", turn("default", "cached?")
    )
    assert status == 200
    wait_until(lambda: redis_client.keys("fr:cache:*"), what="cache write")
    primary.behave(failure_rate=1.0, failure_status=503)
    secondary.behave(failure_rate=1.0, failure_status=500)

    results = fire(resilient.base, [turn("default", f"q{i}") for i in range(500)])
    assert [r for r in results if r[0] != 200] == []
    assert {r[1]["x-router-fallback"] for r in results} == {"degraded"}
    assert {json.loads(r[2])["choices"][0]["message"]["content"] for r in results} == {DEGRADED}
    upstream = primary.stats()["requests"] + secondary.stats()["requests"]
    assert upstream <= 1.2 * 500, upstream

    status, headers, raw = http(
        "POST", resilient.base + "/v1/chat/completions", turn("default", "cached?")
    )
    assert status == 200 and headers["x-router-fallback"] == "cache"
    assert json.loads(raw)["choices"] == json.loads(cached_raw)["choices"]

    with httpx.stream("POST", resilient.base + "/v1/chat/completions",
                      json={**turn("default", "cached?"), "stream": True}) as resp:  # fmt: skip
        assert resp.headers["x-router-fallback"] == "cache"
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "")
        for c in map(json.loads, events[:-1])
        if c["choices"]
    )
    assert text == json.loads(cached_raw)["choices"][0]["message"]["content"]


def test_no_degraded_tier_means_503(resilient: GatewayServer, primary: SimProcess, secondary: SimProcess) -> None:  # fmt: skip
    """A chain without `degraded` answers 503 in the OpenAI envelope when everything is down."""
    primary.behave(failure_rate=1.0)
    secondary.behave(failure_rate=1.0)
    status, headers, raw = http("POST", resilient.base + "/v1/chat/completions", turn("bare"))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(raw)["error"]["type"] == "upstream_error"


def test_last_deployment_is_retried_with_backoff(
    resilient: GatewayServer, primary: SimProcess
) -> None:
    """With no other deployment left, a retryable failure is retried max_retries times."""
    primary.behave(failure_rate=1.0, failure_status=503)
    status, headers, _ = http("POST", resilient.base + "/v1/chat/completions", turn("primary"))
    assert status == 503
    assert headers["x-router-attempts"] == "3" and primary.stats()["requests"] == 3


def test_non_retryable_failure_is_not_retried(
    resilient: GatewayServer, primary: SimProcess
) -> None:
    """A 401 from the only deployment is not retried (and not counted by its breaker)."""
    primary.behave(failure_rate=1.0, failure_status=401)
    status, headers, _ = http("POST", resilient.base + "/v1/chat/completions", turn("primary"))
    assert status == 503 and headers["x-router-attempts"] == "1"
    view = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert view["primary:0"]["total_failures"] == 0


def test_slow_first_token_fails_over_and_counts_against_the_breaker(
    closing: ExitStack, resilient: GatewayServer, primary: SimProcess
) -> None:
    """A stream with no first token within stream_ttft_seconds is failed over, invisibly."""
    primary.behave(latency_ms=2000)
    client = closing.enter_context(openai.OpenAI(base_url=resilient.base + "/v1", api_key="x"))
    started = time.monotonic()
    chunks = list(client.chat.completions.create(**turn("default"), stream=True))
    assert time.monotonic() - started < 1.5
    assert {c.model for c in chunks} == {"secondary"}
    view = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert view["primary:0"]["total_failures"] == 1


def test_stream_broken_after_first_token_counts_as_a_failure(
    resilient: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """With nothing to continue it, the SSE error event ends the stream, and the breaker hears
    of the failure."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=3)
    secondary.behave(failure_rate=1.0, failure_status=503)
    with httpx.stream("POST", resilient.base + "/v1/chat/completions",
                      json={**turn("default"), "stream": True}) as resp:  # fmt: skip
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["error"]["code"] == "stream_interrupted"
    view = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert view["primary:0"]["total_failures"] == 1


def test_breaker_views_and_reset(resilient: GatewayServer, primary: SimProcess) -> None:
    """/circuit-breakers shows the trip; reset closes it; an unknown name is a 404 envelope."""
    primary.behave(failure_rate=1.0)
    for _ in range(5):
        http("POST", resilient.base + "/v1/chat/completions", turn("default"))
    view = json.loads(http("GET", resilient.base + "/circuit-breakers")[2])
    primary_view = view["circuit_breakers"]["primary:0"]
    assert view["shared"] is True
    assert primary_view["state"] == "open" and primary_view["trips"] == 1
    assert primary_view["retry_in_seconds"] > 0 and primary_view["total_failures"] == 5
    assert primary_view["health"]["samples"] == 5 and primary_view["health"]["success_rate"] == 0
    status, _, raw = http("POST", resilient.base + "/circuit-breakers/primary:0/reset")
    assert status == 200 and json.loads(raw)["state"] == "closed"
    status, _, raw = http("POST", resilient.base + "/circuit-breakers/nope/reset")
    assert status == 404 and json.loads(raw)["error"]["code"] == "deployment_not_found"
    assert (
        json.loads(http("GET", resilient.base + "/health")[2])["providers"]["primary:0"] == "closed"
    )


def test_fallback_admin_views(
    resilient: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """The queue shows chains and availability; statistics count tiers; reset zeroes them."""
    http("POST", resilient.base + "/v1/chat/completions", turn("default", "one"))
    primary.behave(failure_rate=1.0)
    http("POST", resilient.base + "/v1/chat/completions", turn("default", "two"))
    secondary.behave(failure_rate=1.0)
    http("POST", resilient.base + "/v1/chat/completions", turn("default", "three"))

    queue = json.loads(http("GET", resilient.base + "/api/admin/fallback/queue")[2])
    default = queue["chains"]["default"]
    assert [s["step"] for s in default] == ["primary", "secondary", "cache", "degraded"]
    assert default[0]["deployments"][0]["name"] == "primary:0"
    assert default[2] == {"step": "cache", "kind": "tier"}

    stats = json.loads(http("GET", resilient.base + "/api/admin/fallback/statistics")[2])
    assert stats["total_requests"] == 3
    assert stats["tiers"] == {"primary": 1, "fallback": 1, "cache": 0, "degraded": 1, "failed": 0}
    assert stats["by_model"] == {"primary": 1, "secondary": 1}
    # The second request: primary three times (two retries), then secondary. The third: primary
    # once (four failures in five calls is over the 50 % rate: its breaker opens and refuses the
    # retry), then secondary three times.
    assert stats["total_attempts"] == 1 + 4 + 4 and stats["total_retries"] == 2 + 2

    status, _, raw = http("POST", resilient.base + "/api/admin/fallback/reset-statistics")
    assert status == 200 and json.loads(raw)["total_requests"] == 0


def test_two_api_processes_agree_on_a_breaker(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """A breaker tripped through one API process keeps the other from calling that deployment."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(resilient_config(redis_url, tmp_path / "logs", primary, secondary))
    )
    ports = [free_port(), free_port()]
    procs = [api_process(config, {}, port) for port in ports]
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base in bases:
            wait_until(lambda b=base: healthy(b + "/readyz"), timeout=30, what="api process")
        primary.behave(failure_rate=1.0)
        for _ in range(5):
            assert http("POST", bases[0] + "/v1/chat/completions", turn("default"))[0] == 200
        view = json.loads(http("GET", bases[1] + "/circuit-breakers")[2])["circuit_breakers"]
        assert view["primary:0"]["state"] == "open"
        primary.reset()  # healthy again, but B must not try it while the breaker is open
        status, headers, _ = http("POST", bases[1] + "/v1/chat/completions", turn("default"))
        assert status == 200 and headers["x-router-model"] == "secondary"
        assert primary.stats()["requests"] == 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


@pytest.mark.skipif(
    not redis_server_available(), reason="needs the redis-server binary to pause it"
)
def test_redis_outage_mid_traffic(
    primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """Redis paused mid-traffic: no request fails; resumed: pins, pins made meanwhile and shared
    breakers all work again without a restart."""
    server = start_redis_server()
    assert server.pid is not None
    try:
        config = resilient_config(server.url, tmp_path / "logs", primary, secondary)
        settings = settings_for(server.url, tmp_path / "logs", config["models"], config["chains"],
                                redis=config["redis"], resilience=config["resilience"])  # fmt: skip
        with GatewayServer(create_app(settings, environ={})) as gw:
            status, _, raw = http("POST", gw.base + "/initiate_call", {"model": "secondary"})
            before = json.loads(raw)["session_id"]

            def chat(session_id: str) -> tuple[int, dict[str, str], bytes]:
                body = {"session_id": session_id, "message": "hi"}
                return http("POST", gw.base + "/chat_completions", body, timeout=10)

            assert chat(before)[0] == 200
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(8) as pool:
                    during = list(pool.map(lambda _: chat(before)[0], range(200)))
                ready = json.loads(http("GET", gw.base + "/readyz")[2])
                status, _, raw = http("POST", gw.base + "/initiate_call", {"model": "primary"})
                assert status == 200
                made_during = json.loads(raw)["session_id"]
                assert chat(made_during)[1]["x-router-model"] == "primary"
                # An OpenAI client's new X-Session-ID takes the model it asks for, not the
                # default chain, and keeps it for the next turn.
                sdk = {"X-Session-ID": "sdk-during"}
                answers = [http("POST", gw.base + "/v1/chat/completions", turn("secondary"),
                                sdk)[1]["x-router-model"] for _ in range(2)]  # fmt: skip
                assert answers == ["secondary", "secondary"]
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert during == [200] * 200
            assert ready["mode"] == "fail-open" and ready["status"] == "ready"

            wait_until(lambda: json.loads(http("GET", gw.base + "/readyz")[2])["redis_ok"],
                       what="Redis recovery")  # fmt: skip
            assert chat(before)[1]["x-router-model"] == "secondary"
            assert chat(made_during)[1]["x-router-model"] == "primary"
            store = redis.Redis.from_url(server.url, decode_responses=True)
            try:
                assert store.get(f"fr:session:{made_during}") == "anonymous primary"
                assert store.get("fr:session:sdk-during") == "anonymous secondary", "written back"
                primary.behave(failure_rate=1.0)
                for _ in range(5):
                    http("POST", gw.base + "/v1/chat/completions", turn("default"))
                assert store.hget("fr:breaker:primary:0", "state") == "open"
            finally:
                store.close()
    finally:
        server.stop()


def test_deployment_names_with_slashes_are_reset_and_switched(
    redis_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """The config accepts `/` in a deployment name (`org/model`); its breaker reset and its
    switch are found by that name."""
    models = {"primary": openai_model(primary.openai_url, "p", name="acme/primary-1")}
    settings = settings_for(redis_url, tmp_path / "logs", models,
                            resilience={"health": {"enabled": False}})  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        status, _, body = http("POST", server.base + "/circuit-breakers/acme/primary-1/reset", {})
        assert status == 200 and json.loads(body)["name"] == "acme/primary-1"
        url = server.base + "/api/llm/providers/acme/primary-1/enable"
        status, _, body = http("POST", url, {"enabled": False})
        assert status == 200 and json.loads(body)["enabled"] is False
        status, _, _ = http("POST", server.base + "/circuit-breakers/acme/nope/reset", {})
        assert status == 404
