"""Budgets across a Redis Sentinel failover: what was counted before the primary died is still
counted after it, nothing is counted twice, and no reservation is left behind. Turns answered
while Redis was unreachable are not counted (budgets fail open, like all shared state)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.api.auth import digest, key_id
from services.app import create_app
from services.platform.redis_connection import redis_server_available
from tests.helpers import GatewayServer, SimProcess, http, openai_model, settings_for, wait_until
from tests.redis_topology import SentinelSet, start_sentinel_set

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="needs redis-server")

CLIENT_KEY = "fr-client-failover-0a1b2c3d"
ADMIN_KEY = "fr-admin-failover-4e5f6a7b"
TURN = {"model": "primary", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    topology = start_sentinel_set()
    yield topology
    topology.stop()


def test_budget_counts_survive_a_failover_and_are_never_doubled(
    sentinels: SentinelSet, primary: SimProcess, tmp_path: Path
) -> None:
    model = {**openai_model(primary.openai_url, "p"),
             "pricing": {"input_per_mtok": 10.0, "output_per_mtok": 10.0}}  # fmt: skip
    settings = settings_for(sentinels.url, tmp_path / "logs", {"primary": model},
                            resilience={"health": {"enabled": False}},
                            api={"budgets": {"enabled": True, "default_usd": 100.0}})  # fmt: skip
    environ = {"FR_API_KEYS": CLIENT_KEY, "FR_ADMIN_KEY": ADMIN_KEY}
    mine = key_id(digest(CLIENT_KEY))
    client, admin = (
        {"Authorization": f"Bearer {CLIENT_KEY}"},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    with GatewayServer(create_app(settings, environ=environ)) as server:

        def turns(count: int) -> None:
            for _ in range(count):
                status, _, body = http("POST", server.base + "/v1/chat/completions", TURN, client)
                assert status == 200, body

        def view() -> dict[str, Any]:
            body = http("GET", server.base + "/api/admin/budgets", headers=admin)[2]
            return dict(json.loads(body)["keys"][mine])

        turns(10)
        wait_until(lambda: view()["reserved_usd"] == 0, what="every reservation settled")
        before = view()["spent_usd"]
        per_turn = before / 10
        assert per_turn > 0

        old = sentinels.current_primary()
        sentinels.node_at(old).kill()
        turns(5)  # answered fail-open: not counted
        sentinels.wait_failover_from(old)
        wait_until(lambda: json.loads(http("GET", server.base + "/readyz")[2])["redis_ok"],
                   timeout=30, what="the gateway back on the new primary")  # fmt: skip
        turns(10)
        wait_until(lambda: view()["reserved_usd"] == 0, what="every reservation settled")
        after = view()
    assert after["spent_usd"] == pytest.approx(before + 10 * per_turn), (
        "the 10 turns counted before the failover are still counted, the 10 after it added "
        "once, the 5 answered fail-open not at all"
    )
