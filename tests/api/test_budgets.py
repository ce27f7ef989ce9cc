"""Per-key spending budgets under concurrency: reserved before the call, settled after, so 50
concurrent requests overspend a small budget by at most one request's reservation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from services.api.auth import digest, key_id
from services.api.budgets import Budgets
from services.app import create_app
from services.platform.redis_connection import EmbeddedRedis
from services.platform.redis_gate import RedisGate
from services.platform.redis_topology import async_redis
from tests.conftest import emptied
from tests.helpers import GatewayServer, SimProcess, http, openai_model, settings_for, wait_until


@pytest.fixture
def redis_url(topology_redis_url: str) -> str:
    """Shared state: every test here runs on standalone, Sentinel and Cluster Redis."""
    return topology_redis_url


CLIENT_KEY = "fr-client-budget-0a1b2c3d"
ADMIN_KEY = "fr-admin-budget-4e5f6a7b"
ENVIRON = {"FR_API_KEYS": CLIENT_KEY, "FR_ADMIN_KEY": ADMIN_KEY}
BUDGET_USD = 0.004
# The reservation of one turn: "hi" (2 characters) and max_tokens 30, at $10 per million tokens.
ONE_RESERVATION_USD = (2 + 30) * 10 / 1_000_000
TURN = {"model": "primary", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_fifty_concurrent_requests_overspend_by_at_most_one_reservation(
    redis_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """A $0.004 budget, 50 requests at once from one key: some answered, the rest 429
    `budget_exceeded` with the seconds to the reset; what was spent stays within the budget plus
    one reservation, and equals what the ledger recorded for that key."""
    model = {**openai_model(primary.openai_url, "p"),
             "pricing": {"input_per_mtok": 10.0, "output_per_mtok": 10.0}}  # fmt: skip
    settings = settings_for(redis_url, tmp_path / "logs", {"primary": model},
                            resilience={"health": {"enabled": False}},
                            api={"budgets": {"enabled": True, "default_usd": BUDGET_USD}})  # fmt: skip
    mine = key_id(digest(CLIENT_KEY))
    with GatewayServer(create_app(settings, environ=ENVIRON)) as server:
        url = server.base + "/v1/chat/completions"
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: http("POST", url, TURN, auth(CLIENT_KEY)), range(50)))

        def view() -> dict[str, Any]:
            body = http("GET", server.base + "/api/admin/budgets", headers=auth(ADMIN_KEY))[2]
            return dict(json.loads(body)["keys"][mine])

        wait_until(lambda: view()["reserved_usd"] == 0, what="every reservation settled")
        spent = view()["spent_usd"]

        def ledger_cost() -> float:
            costs = http("GET", server.base + "/api/llm/costs?days=1", headers=auth(CLIENT_KEY))
            return float(json.loads(costs[2])["total_cost_usd"])

        wait_until(lambda: abs(ledger_cost() - spent) < 1e-9, what="the ledger to agree")
    statuses = [status for status, _, _ in answers]
    refused = [json.loads(body)["error"] for status, _, body in answers if status == 429]
    assert statuses.count(200) >= 1 and len(refused) >= 1 and set(statuses) == {200, 429}
    assert {error["code"] for error in refused} == {"budget_exceeded"}
    assert all(int(h["retry-after"]) > 0 for s, h, _ in answers if s == 429)
    assert 0 < spent <= BUDGET_USD + ONE_RESERVATION_USD


def test_the_admin_sets_a_limit_for_every_process(
    redis_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """A limit of 0 set through the admin API refuses the next request; null restores the
    configured one (none here)."""
    settings = settings_for(redis_url, tmp_path / "logs",
                            {"primary": openai_model(primary.openai_url, "p")},
                            resilience={"health": {"enabled": False}},
                            api={"budgets": {"enabled": True}})  # fmt: skip
    mine = key_id(digest(CLIENT_KEY))
    with GatewayServer(create_app(settings, environ=ENVIRON)) as server:
        url = server.base + "/v1/chat/completions"
        assert http("POST", url, TURN, auth(CLIENT_KEY))[0] == 200
        limits = server.base + f"/api/admin/budgets/{mine}"
        status, _, body = http("PUT", limits, {"budget_usd": 0}, auth(ADMIN_KEY))
        assert status == 200 and json.loads(body)["budget_usd"] == 0
        assert http("PUT", limits, {"budget_usd": 0}, auth(CLIENT_KEY))[0] == 403
        assert http("POST", url, TURN, auth(CLIENT_KEY))[0] == 429
        assert http("PUT", limits, {"budget_usd": None}, auth(ADMIN_KEY))[0] == 200
        assert http("POST", url, TURN, auth(CLIENT_KEY))[0] == 200
        bad = server.base + "/api/admin/budgets/not-a-key-id"
        assert http("PUT", bad, {"budget_usd": 1}, auth(ADMIN_KEY))[0] == 400


async def test_an_upgrade_keeps_the_periods_spend_and_the_admins_limits(
    redis_server: EmbeddedRedis, primary: SimProcess, tmp_path: Path
) -> None:
    """Keys written before the cluster-safe `{budget}` layout (a standalone Redis) are renamed
    at start: the spend so far and the admin's limits carry over, once."""
    url = emptied(redis_server.url)
    settings = settings_for(url, tmp_path / "logs", {"primary": openai_model(primary.openai_url, "p")},
                            api={"budgets": {"enabled": True}})  # fmt: skip
    client = async_redis(url, timeout=5, decode_responses=True)
    await client.hset("fr:budget-limits", "k1", 5_000_000)
    await client.hset("fr:budget:k1:2026-11", mapping={"spent": 1234, "reserved": 0})
    budgets = Budgets(client, RedisGate(client), settings, prefix="fr:")
    assert await budgets.adopt_legacy_keys() == 2
    assert await client.hget("fr:{budget}:limits", "k1") == "5000000"
    assert await client.hget("fr:{budget}:k1:2026-11", "spent") == "1234"
    assert not await client.exists("fr:budget-limits", "fr:budget:k1:2026-11")
    await client.hset("fr:budget-limits", "k2", 1)  # written by a process not yet upgraded
    assert await budgets.adopt_legacy_keys() == 0, "adopted once: the marker ends the scans"
    await client.aclose()
