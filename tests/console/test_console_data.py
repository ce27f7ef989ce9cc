"""`/api/admin/console`, the console page's one read, against a real gateway, Redis and ledger:
latency and success from the ledger's rows, recent failovers, the planner's timeline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from services.capacity.state import PublishedState, publish
from services.console.overview import call_stats, percentile
from tests.helpers import GatewayServer, SimProcess, http, wait_until


def console(base: str) -> dict[str, Any]:
    status, _, raw = http("GET", base + "/api/admin/console")
    assert status == 200, raw
    return dict(json.loads(raw))


def chat(base: str) -> None:
    body = {"model": "bare", "messages": [{"role": "user", "content": "hi"}]}
    assert http("POST", base + "/v1/chat/completions", body)[0] == 200


def test_latency_success_and_failovers_come_from_the_ledger(
    gateway: GatewayServer, primary: SimProcess
) -> None:
    for _ in range(3):
        chat(gateway.base)
    primary.behave(failure_rate=1.0)
    chat(gateway.base)  # three failed calls on the primary, then the secondary answers

    def rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in data["deployments"]}

    wait_until(lambda: rows(console(gateway.base))["secondary:0"]["calls"] == 1,
               what="the failover in the ledger")  # fmt: skip
    data = console(gateway.base)
    assert data["latency_source"].startswith("upstream calls of the last hour in the ledger")
    first = rows(data)["primary:0"]
    assert first["calls"] == 6 and first["success_rate"] == 0.5
    assert 0 < first["p50_ms"] <= first["p95_ms"]
    assert rows(data)["secondary:0"]["success_rate"] == 1.0
    incident = data["incidents"][0]
    assert incident["deployment"] == "secondary:0" and incident["outcome"] == "ok"
    assert incident["attempts"] == 4 and len(data["incidents"]) == 1
    assert data["status"] == "ok" and data["problems"] == []
    bare = data["chains"]["bare"]
    assert [step["step"] for step in bare] == ["primary", "secondary"]
    # 3 of the primary's 6 calls in the window failed: the 50 % failure rate opened its breaker.
    assert [step["usable"] for step in bare] == [False, True]
    assert first["breaker"] == "open" and first["retry_in_seconds"] > 0


def test_the_planners_timeline_is_read_from_redis(gateway: GatewayServer, redis_url: str) -> None:
    async def planner_published() -> None:
        client = aioredis.Redis.from_url(redis_url)
        state = PublishedState(planner="p1", updated=1_800_000_000.0, target_selector="default",
                               target_role="large", threshold=1.0, signal="request_rate",
                               observed={}, models={})  # fmt: skip
        await publish(client, "fr:", state, 30, ["scaling up", "small model ready after 10s"])
        await client.aclose()

    asyncio.run(planner_published())
    timeline = console(gateway.base)["timeline"]
    assert timeline == [
        {"ts": 1_800_000_000.0, "message": "small model ready after 10s"},
        {"ts": 1_800_000_000.0, "message": "scaling up"},
    ]


def test_percentiles_are_nearest_rank_over_successful_calls() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    calls = [(float(ms), True) for ms in range(1, 101)] + [(5000.0, False)]
    stats = call_stats(calls)
    assert (stats["p50_ms"], stats["p95_ms"], stats["calls"]) == (50.0, 95.0, 101)
    assert stats["success_rate"] == round(100 / 101, 4)
    assert call_stats([]) == {"p50_ms": None, "p95_ms": None, "success_rate": None, "calls": 0}
