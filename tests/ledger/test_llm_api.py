"""The /api/llm views: exact costs and savings, UTC trends, provider switches, bad input."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from services.app import create_app
from services.config import Settings
from services.ledger.db import make_engine, records
from tests.helpers import GatewayServer, SimProcess, http, openai_model, wait_until


def llm_settings(redis_url: str, database_url: str, tmp_path: Path, primary: SimProcess,
                 secondary: SimProcess) -> Settings:  # fmt: skip
    remote = openai_model(primary.openai_url, "p")
    remote["pricing"] = {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
    local = openai_model(secondary.openai_url, "s")
    local["local"] = True
    return Settings.model_validate(
        {
            "redis": {"url": redis_url},
            "log": {"dir": str(tmp_path / "logs")},
            "database": {"url": database_url},
            "ledger": {"wal_dir": str(tmp_path / "wal"), "flush_interval_seconds": 0.1,
                       "reference_pricing": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}},
            "models": {"remote": remote, "local": local},
            "chains": {"default": ["remote", "local"]},
            "sessions": {"default_selector": "default"},
            "resilience": {"health": {"enabled": False}},
        }
    )  # fmt: skip


@pytest.fixture
def llm(redis_url: str, database_url: str, tmp_path: Path, primary: SimProcess,
        secondary: SimProcess) -> Iterator[GatewayServer]:  # fmt: skip
    settings = llm_settings(redis_url, database_url, tmp_path, primary, secondary)
    with GatewayServer(create_app(settings, environ={})) as server:
        yield server


def get(base: str, path: str) -> tuple[int, Any]:
    status, _, raw = http("GET", base + path)
    return status, json.loads(raw)


def record(base: str, **body: Any) -> tuple[int, Any]:
    status, _, raw = http("POST", base + "/api/llm/record", body)
    return status, json.loads(raw)


def flushed(base: str) -> bool:
    return bool(get(base, "/api/llm/health")[1]["buffer_len"] == 0)


def test_costs_and_savings_are_exact_on_a_hand_computed_workload(llm: GatewayServer) -> None:
    """3 remote calls and 1 local call, priced by hand: totals, local/remote, savings to the cent."""
    for tokens_in, tokens_out in ((1_000_000, 500_000), (2_000_000, 1_000_000), (333_333, 777_777)):
        status, body = record(llm.base, model="remote", provider="remote:0",
                              tokens_in=tokens_in, tokens_out=tokens_out)  # fmt: skip
        assert status == 201, body
    assert (
        record(llm.base, model="local", provider="local:0", tokens_in=400_000, tokens_out=100_000)[
            0
        ]
        == 201
    )
    wait_until(lambda: flushed(llm.base), what="ledger flush")
    status, costs = get(llm.base, "/api/llm/costs?days=1")
    assert status == 200
    # remote: in 3,333,333 x 0.15 = 0.49999995; out 2,277,777 x 0.60 = 1.3666662 -> 1.86666615
    assert costs["total_cost_usd"] == pytest.approx(1.86666615, abs=1e-9)
    assert (costs["total_requests"], costs["local_requests"], costs["remote_requests"]) == (4, 1, 3)
    # reference: in 3,733,333 x 2.5 = 9.3333325; out 2,377,777 x 10 = 23.77777 -> 33.1111025
    assert costs["hypothetical_reference_cost_usd"] == pytest.approx(33.1111025, abs=1e-9)
    assert costs["estimated_savings_usd"] == pytest.approx(33.1111025 - 1.86666615, abs=1e-9)
    assert costs["savings_percentage"] == pytest.approx(94.36, abs=0.005)
    assert costs["by_provider"]["remote:0"]["requests"] == 3
    assert costs["by_provider"]["local:0"] == {"requests": 1, "tokens_in": 400_000,
                                               "tokens_out": 100_000, "local": True, "cost_usd": 0.0}  # fmt: skip


def test_trends_group_by_utc_day(llm: GatewayServer) -> None:
    """Two records a minute apart across UTC midnight land on two days; totals per provider."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=30, microsecond=0)
    yesterday = today - timedelta(minutes=1)
    for when in (yesterday, today, today):
        assert record(llm.base, model="remote", provider="remote:0", tokens_in=1_000_000,
                      tokens_out=0, timestamp=when.isoformat())[0] == 201  # fmt: skip
    wait_until(lambda: flushed(llm.base), what="ledger flush")
    status, trends = get(llm.base, "/api/llm/trends?days=2")
    assert status == 200
    days = {d["day"]: d for d in trends["daily"]}
    assert list(days) == [yesterday.date().isoformat(), today.date().isoformat()]
    assert days[yesterday.date().isoformat()]["requests"] == 1
    assert days[today.date().isoformat()]["providers"]["remote:0"]["requests"] == 2
    assert days[today.date().isoformat()]["cost_usd"] == pytest.approx(0.30)
    assert get(llm.base, "/api/llm/trends?days=1")[1]["daily"][0]["day"] == today.date().isoformat()


def test_routed_requests_are_recorded_with_their_attempts(
    llm: GatewayServer, primary: SimProcess
) -> None:
    """A failed-over request leaves one request row and one row per attempt, with usage."""
    primary.behave(failure_rate=1.0)
    body = {"model": "default", "messages": [{"role": "user", "content": "hi there"}]}
    status, headers, _ = http("POST", llm.base + "/v1/chat/completions", body)
    assert status == 200
    primary.reset()  # answered at the first attempt: one row that is request and attempt at once
    assert http("POST", llm.base + "/v1/chat/completions", body)[0] == 200
    wait_until(lambda: flushed(llm.base), what="ledger flush")
    status, usage = get(llm.base, "/api/llm/metrics?days=1")
    assert status == 200
    # Three failed attempts (two retries) before the fallback, one answered the second time.
    assert usage["providers"]["remote:0"]["failed_attempts"] == 3
    assert usage["providers"]["remote:0"]["attempts"] == 4
    assert usage["providers"]["remote:0"]["requests"] == 1
    assert usage["providers"]["local:0"]["requests"] == 1
    assert usage["providers"]["local:0"]["tokens_in"] == 5  # the simulator counts words + 3
    status, one = get(llm.base, "/api/llm/metrics?days=1&provider=local:0")
    assert status == 200 and list(one["providers"]) == ["local:0"]
    health = get(llm.base, "/health")[1]
    assert health["db_ok"] is True and health["buffer_len"] == 0
    assert health["last_db_write"].endswith("Z") and headers["x-request-id"]

    # Seed 002's names over the same two requests: a model or a provider kind narrows too.
    assert usage["providers"]["local:0"]["fallbacks"] == 1
    assert usage["providers"]["remote:0"]["fallbacks"] == 0
    assert list(get(llm.base, "/api/llm/metrics?days=1&provider=local")[1]["providers"]) == [
        "local:0"
    ]
    assert set(get(llm.base, "/api/llm/metrics?days=1&provider=openai")[1]["providers"]) == {
        "local:0",
        "remote:0",
    }
    assert get(llm.base, "/api/llm/metrics?provider=anthropic")[0] == 404
    listed = {p["name"]: p for p in get(llm.base, "/api/llm/providers?days=1")[1]["providers"]}
    remote, local = listed["remote:0"], listed["local:0"]
    assert (remote["total_requests"], remote["successful_requests"]) == (4, 1)
    assert remote["success_rate"] == 25.0 and remote["status"] == "degraded"
    assert remote["provider_type"] == "remote" and remote["circuit_state"] == "closed"
    assert remote["is_available"] is True and remote["display_name"] == "remote via openai"
    assert local["success_rate"] == 100.0 and local["status"] == "healthy"
    assert local["provider_type"] == "local" and local["display_name"] == "local via openai (local)"
    assert local["avg_response_time_ms"] > 0
    summary = get(llm.base, "/api/llm/health")[1]
    assert summary["providers"] == {"healthy": 2, "degraded": 0, "down": 0, "disabled": 0}
    assert summary["fallback_available"] is True and summary["usable_steps"] == ["remote", "local"]
    assert (
        http("POST", llm.base + "/api/llm/providers/local:0/enable", {"enabled": False})[0] == 200
    )
    summary = get(llm.base, "/api/llm/health")[1]
    assert summary["providers"]["disabled"] == 1 and summary["fallback_available"] is False


def test_a_record_in_seed_002s_names_is_stored_as_sent(
    llm: GatewayServer, database_url: str
) -> None:
    """`provider_name`, `prompt_tokens`, `completion_tokens`, `duration_seconds` and a status
    word, as seed 002's `record_request(...)` sends them; an unpriced model is recorded at $0
    and the answer says so (refusing would lose the tokens)."""
    status, body = record(llm.base, provider_name="ollama", model="llama3.2", status="timeout",
                          prompt_tokens=150, completion_tokens=300, duration_seconds=0.52)  # fmt: skip
    assert status == 201 and body["priced"] is False and "no configured pricing" in body["warning"]
    wait_until(lambda: flushed(llm.base), what="ledger flush")

    async def row() -> Any:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = sa.select(records).where(records.c.id == body["id"])
                return (await conn.execute(query)).one()._mapping
        finally:
            await engine.dispose()

    stored = asyncio.run(row())
    assert (stored["deployment"], stored["model"], stored["status"]) == ("ollama", "llama3.2", 504)
    assert (stored["tokens_in"], stored["tokens_out"], stored["cost_nanousd"]) == (150, 300, 0)
    assert stored["duration_ms"] == pytest.approx(520) and stored["outcome"] == "error"
    both = {
        "model": "remote",
        "tokens_in": 1,
        "tokens_out": 1,
        "duration_ms": 1,
        "duration_seconds": 1,
    }
    assert record(llm.base, **both)[0] == 422
    assert record(llm.base, model="remote", tokens_in=1, tokens_out=1, status="fine")[0] == 422
    assert record(llm.base, model="remote", tokens_in=1, tokens_out=1, status=99)[0] == 422


def test_disabling_a_provider_reroutes_at_once_and_in_other_processes(
    llm: GatewayServer, redis_url: str, database_url: str, tmp_path: Path,
    primary: SimProcess, secondary: SimProcess, redis_client: redis.Redis,
) -> None:  # fmt: skip
    """POST enable false: this process stops using it now, another one within a sync."""
    settings = llm_settings(redis_url, database_url, tmp_path / "second", primary, secondary)
    with GatewayServer(create_app(settings, environ={})) as other:
        status, _, raw = http(
            "POST", llm.base + "/api/llm/providers/remote:0/enable", {"enabled": False}
        )
        assert status == 200 and json.loads(raw) == {"name": "remote:0", "enabled": False}
        body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        assert http("POST", llm.base + "/v1/chat/completions", body)[1]["x-router-model"] == "local"

        def other_sees_it() -> bool:
            models = get(other.base, "/api/admin/fallback/queue")[1]["models"]
            return models["remote"][0]["enabled"] is False

        wait_until(other_sees_it, what="the other process to follow the switch")
        assert (
            http("POST", other.base + "/v1/chat/completions", body)[1]["x-router-model"] == "local"
        )
        assert primary.stats()["requests"] == 0
        registry = get(llm.base, "/api/llm/providers")[1]["providers"]
        assert {r["name"]: r["enabled"] for r in registry} == {"remote:0": False, "local:0": True}
        http("POST", llm.base + "/api/llm/providers/remote:0/enable", {"enabled": True})
        assert (
            http("POST", llm.base + "/v1/chat/completions", body)[1]["x-router-model"] == "remote"
        )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/llm/costs?days=-1", 422),
        ("/api/llm/costs?days=0", 422),
        ("/api/llm/costs?days=100000", 422),
        ("/api/llm/costs?days=abc", 422),
        ("/api/llm/trends?days=1.5", 422),
        ("/api/llm/metrics?provider=nope", 404),
        ("/api/llm/metrics?days=99999999999999999999", 422),
    ],
)
def test_bad_query_parameters(llm: GatewayServer, path: str, status: int) -> None:
    """Out-of-range, mistyped and unknown query values get a 4xx in the OpenAI envelope."""
    got, _, raw = http("GET", llm.base + path)
    assert got == status
    assert set(json.loads(raw)["error"]) == {"message", "type", "code"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "remote", "tokens_in": -1, "tokens_out": 0}, 422),
        ({"model": "remote", "tokens_in": "5", "tokens_out": 0}, 422),
        ({"model": "remote", "tokens_in": 1.5, "tokens_out": 0}, 422),
        ({"model": "remote", "tokens_in": 1, "tokens_out": 1, "surprise": 1}, 422),
        ({"model": "remote", "tokens_in": 1}, 422),
        ({"model": "../etc", "tokens_in": 1, "tokens_out": 1}, 422),
        ({"model": "remote", "tokens_in": 1, "tokens_out": 1, "cost_usd": -2}, 422),
        (
            {
                "model": "remote",
                "tokens_in": 1,
                "tokens_out": 1,
                "timestamp": "2999-01-01T00:00:00Z",
            },
            400,
        ),
        (
            {
                "model": "remote",
                "tokens_in": 1,
                "tokens_out": 1,
                "timestamp": "2026-01-01T00:00:00",
            },
            400,
        ),
        ([1, 2], 422),
    ],
)
def test_bad_records_are_refused(llm: GatewayServer, body: Any, status: int) -> None:
    """Negative, mistyped, unknown, future and zone-less records get a 4xx."""
    got, _, raw = http("POST", llm.base + "/api/llm/record", body)
    assert got == status, raw
    assert set(json.loads(raw)["error"]) == {"message", "type", "code"}


def test_bad_enable_requests(llm: GatewayServer) -> None:
    """An unknown provider is 404; a non-boolean switch is 422."""
    assert http("POST", llm.base + "/api/llm/providers/nope/enable", {"enabled": False})[0] == 404
    assert (
        http("POST", llm.base + "/api/llm/providers/remote:0/enable", {"enabled": "no"})[0] == 422
    )
    assert http("POST", llm.base + "/api/llm/providers/remote:0/enable", {})[0] == 422


def test_streamed_answer_records_upstream_usage_and_ttft(
    llm: GatewayServer, database_url: str
) -> None:
    """A stream's record carries the usage of its final chunk (not an estimate) and its TTFT."""
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", llm.base + "/v1/chat/completions", json=body) as resp:
        request_id = resp.headers["x-request-id"]
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in events)  # asked for upstream, hidden from the client
    wait_until(lambda: flushed(llm.base), what="ledger flush")

    async def row() -> Any:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = sa.select(records).where(records.c.request_id == request_id)
                return (await conn.execute(query)).one()
        finally:
            await engine.dispose()

    found = asyncio.run(row())
    assert (found.kind, found.model, found.estimated, found.attempts) == (
        "request",
        "remote",
        False,
        1,
    )
    assert found.tokens_in == 4 and found.tokens_out > 0 and found.ttft_ms is not None
    assert found.cost_nanousd == found.tokens_in * 150 + found.tokens_out * 600


def test_costs_and_trends_as_csv_sum_to_their_json(llm: GatewayServer) -> None:
    """`?format=csv` and `Accept: text/csv` give CSV that Python's csv module reads, whose rows
    sum to the JSON's figures; the JSON carries the month-end projection."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    usage = [
        ("remote", "remote:0", 1_234_567, 89_012, None),
        ("remote", "remote:0", 7, 3, yesterday),
        ("local", "local:0", 400_000, 100_000, None),
    ]
    for model, provider, tokens_in, tokens_out, when in usage:
        body = {
            "model": model,
            "provider": provider,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
        }
        if when:
            body["timestamp"] = when
        assert record(llm.base, **body)[0] == 201
    wait_until(lambda: flushed(llm.base), what="ledger flush")
    costs = get(llm.base, "/api/llm/costs?days=7")[1]
    status, headers, raw = http("GET", llm.base + "/api/llm/costs?days=7&format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == 'attachment; filename="costs-7d.csv"'
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [r["deployment"] for r in rows] == ["local:0", "remote:0"]
    assert round(float(sum(Decimal(r["cost_usd"]) for r in rows)), 8) == costs["total_cost_usd"] > 0
    assert sum(int(r["requests"]) for r in rows) == costs["total_requests"] == 3
    assert sum(int(r["tokens_in"]) for r in rows) == costs["total_tokens_in"]
    assert costs["projected_period_cost_usd"] >= costs["projection"]["month_to_date_usd"] > 0

    status, _, raw = http(
        "GET", llm.base + "/api/llm/trends?days=7", headers={"Accept": "text/csv"}
    )
    assert status == 200
    lines = list(csv.DictReader(io.StringIO(raw.decode())))
    trends = get(llm.base, "/api/llm/trends?days=7")[1]["daily"]
    assert len(trends) == 2, "yesterday and today"
    for day in trends:
        mine = [r for r in lines if r["day"] == day["day"]]
        assert sum(int(r["requests"]) for r in mine) == day["requests"]
        assert round(float(sum(Decimal(r["cost_usd"]) for r in mine)), 8) == day["cost_usd"]
    assert get(llm.base, "/api/llm/costs?format=xml")[0] == 422
