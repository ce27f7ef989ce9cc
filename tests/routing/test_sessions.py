"""Sessions: pinned in Redis, refreshed on use, shared by every API process on the same Redis."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
import redis

from services.platform.redis_connection import free_port
from tests.helpers import GatewayServer, SimProcess, api_process, healthy, http, wait_until


@pytest.fixture
def redis_url(topology_redis_url: str) -> str:
    """Shared state: every test here runs on standalone, Sentinel and Cluster Redis."""
    return topology_redis_url


def _initiate(base: str, **body: str) -> dict[str, object]:
    status, _, raw = http("POST", base + "/initiate_call", body)
    assert status == 200, raw
    return dict(json.loads(raw))


def test_initiate_then_chat_uses_the_pin(gateway: GatewayServer, secondary: SimProcess) -> None:
    """A session pinned to a model is routed there, and the answer carries the session id."""
    session = _initiate(gateway.base, model="secondary")
    assert session["model"] == "secondary" and session["expires_in"] == 3600
    status, headers, raw = http(
        "POST",
        gateway.base + "/chat_completions",
        {"session_id": session["session_id"], "message": "hi"},
    )
    body = json.loads(raw)
    assert status == 200
    assert body["session_id"] == session["session_id"]
    assert body["model"] == "secondary" and headers["x-router-model"] == "secondary"
    assert secondary.stats()["requests"] == 1


def test_default_pin_and_per_request_override(gateway: GatewayServer) -> None:
    """No model means the default selector; `model` in a turn overrides it for that turn only."""
    session = _initiate(gateway.base, session_id="user-42.chat:1")
    assert session == {"session_id": "user-42.chat:1", "model": "default", "expires_in": 3600}
    turn = {"session_id": "user-42.chat:1", "messages": [{"role": "user", "content": "hi"}]}
    assert http("POST", gateway.base + "/chat_completions", turn)[1]["x-router-model"] == "primary"
    override = {**turn, "model": "secondary"}
    assert (
        http("POST", gateway.base + "/chat_completions", override)[1]["x-router-model"]
        == "secondary"
    )
    assert http("POST", gateway.base + "/chat_completions", turn)[1]["x-router-model"] == "primary"


def test_use_refreshes_the_ttl(gateway: GatewayServer, redis_client: redis.Redis) -> None:
    """Every turn resets the session's TTL (GETEX), so an active session never expires."""
    session_id = str(_initiate(gateway.base)["session_id"])
    key = f"fr:session:{session_id}"
    redis_client.expire(key, 5)
    assert redis_client.ttl(key) <= 5
    http("POST", gateway.base + "/chat_completions", {"session_id": session_id, "message": "hi"})
    assert redis_client.ttl(key) > 3500


def test_unknown_session_is_404(gateway: GatewayServer) -> None:
    """A session that was never created (or expired) is a 404 in the OpenAI envelope."""
    status, _, raw = http(
        "POST", gateway.base + "/chat_completions", {"session_id": "nope", "message": "x"}
    )
    assert status == 404
    assert json.loads(raw)["error"]["code"] == "session_not_found"


def test_x_session_id_pins_openai_clients(closing: ExitStack, gateway: GatewayServer) -> None:
    """X-Session-ID on /v1 creates a pin from the first model, then the pin wins."""
    client = closing.enter_context(
        openai.OpenAI(
            base_url=gateway.base + "/v1",
            api_key="unused",
            default_headers={"X-Session-ID": "sdk-1"},
        )
    )
    messages = [{"role": "user", "content": "hi"}]
    first = client.chat.completions.with_raw_response.create(model="secondary", messages=messages)
    assert first.headers["x-router-model"] == "secondary"
    assert first.headers["x-session-id"] == "sdk-1"
    again = client.chat.completions.create(model="primary", messages=messages)
    assert again.model == "secondary"  # pinned by the first call


def test_a_second_api_process_honours_the_session(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """Two `main.py api` processes on one Redis: a session made on one is routed by the other,
    and re-pinning it on one is honoured by the other's very next turn."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        json.dumps(
            {
                "models": {
                    "primary": {
                        "deployments": [
                            {"provider": "openai", "base_url": primary.openai_url, "model": "p"}
                        ]
                    },
                    "secondary": {
                        "deployments": [
                            {"provider": "openai", "base_url": secondary.openai_url, "model": "s"}
                        ]
                    },
                },
                "sessions": {"default_selector": "primary"},
            }
        )
    )
    # `main.py api` alone: each process writes the ledger's database itself (the inline writer),
    # and its pin cache is on all the same (it was off there until the inline flush's backlog
    # was bounded: services/ledger/db.py, MAX_SLICES).
    env = {"FR_REDIS_URL": redis_url, "FR_LOG_DIR": str(tmp_path / "logs")}
    ports = [free_port(), free_port()]
    procs = [api_process(config, env, port) for port in ports]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base in bases:
            wait_until(lambda base=base: healthy(base + "/livez"), what="api process")
        session = _initiate(bases[0], model="secondary")
        turn = {"session_id": session["session_id"], "message": "hi"}
        status, headers, _ = http("POST", bases[1] + "/chat_completions", turn)
        assert status == 200 and headers["x-router-model"] == "secondary"
        if redis_url.startswith("redis://"):  # counted on the standalone server (the cache's
            feed = "fr:session-pins"  # switch does not depend on the topology)
            with redis.Redis.from_url(redis_url) as client:  # both follow the feed: both on
                wait_until(lambda: client.pubsub_numsub(feed) == [(feed.encode(), 2)],
                           what="both pin caches following the feed")  # fmt: skip
        # The second process now answers this session's turns from its pin cache; a re-pin on
        # the first must reach it before the re-pin is answered (services/routing/pin_cache.py).
        for model in ("primary", "secondary", "primary", "secondary"):
            repinned = _initiate(bases[0], session_id=str(session["session_id"]), model=model)
            assert repinned["model"] == model
            routed = [http("POST", base + "/chat_completions", turn)[1]["x-router-model"]
                      for base in (bases[1], bases[1], bases[0])]  # fmt: skip
            assert routed == [model] * 3
    finally:
        for proc in procs:  # stop every process before asserting anything about how they ended
            proc.terminate()
        codes = [proc.wait(15) for proc in procs]
    assert codes == [0, 0]  # a graceful SIGTERM stop exits 0
