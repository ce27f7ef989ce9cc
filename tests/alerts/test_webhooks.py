"""Alert webhooks against a real HTTP receiver and a real Redis: signed bodies, retries with
backoff (a fake sleep records the waits), no retry where the answer is final, one delivery per
occurrence across processes, and, through a real gateway, alerts raised by real breakers,
budgets and costs while the request path never waits for a receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.alerts.events import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Alert,
    verify,
)
from services.alerts.sender import AlertSender
from services.app import create_app
from services.config import AlertSettings
from services.platform.redis_gate import RedisGate
from tests.alerts.receiver import Receiver
from tests.helpers import GatewayServer, SimProcess, http, openai_model, settings_for, wait_until

SECRET = "whsec-0123456789abcdef"


def alert_settings(url: str, **extra: Any) -> AlertSettings:
    return AlertSettings.model_validate({"webhooks": [{"url": url, "secret": SECRET}], **extra})


def signed(headers: dict[str, str], body: bytes) -> bool:
    return verify(
        SECRET, headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()]
    )


async def delivered(receiver: Receiver, count: int) -> None:
    for _ in range(500):
        if len(receiver.deliveries) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(receiver.deliveries)} deliveries, expected {count}")


async def test_a_500_is_retried_with_backoff_and_the_same_signed_delivery() -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    with Receiver([500, 503, 200]) as receiver:
        sender = AlertSender(alert_settings(receiver.url), {}, None, None, prefix="t:",
                             sleep=fake_sleep)  # fmt: skip
        running = asyncio.create_task(sender.run())
        sender.emit(Alert("breaker.open", "primary:0", "opened", {"trips": 1}))
        await delivered(receiver, 3)
        await sender.close()
        running.cancel()
    assert waits == [1.0, 2.0], "1 s, then 2 s"
    ids = {headers[DELIVERY_HEADER.lower()] for headers, _ in receiver.deliveries}
    assert len(ids) == 1, "one delivery, attempted three times"
    for headers, body in receiver.deliveries:
        assert signed(headers, body)
        assert not verify("another-secret-0000", headers[TIMESTAMP_HEADER.lower()], body,
                          headers[SIGNATURE_HEADER.lower()])  # fmt: skip
    event = json.loads(receiver.deliveries[0][1])
    assert (event["event"], event["subject"], event["details"]) == ("breaker.open", "primary:0",
                                                                    {"trips": 1})  # fmt: skip
    assert sender.counts["sent"] == 1 and sender.counts["failed"] == 0


async def test_a_final_answer_is_not_retried_and_unwanted_events_are_not_sent() -> None:
    with Receiver([400]) as receiver:
        settings = AlertSettings.model_validate(
            {"webhooks": [{"url": receiver.url, "events": ["breaker.open"]}]}
        )
        sender = AlertSender(settings, {}, None, None, prefix="t:")
        running = asyncio.create_task(sender.run())
        sender.emit(Alert("planner.scale", "large-model", "scaling"))  # not subscribed
        sender.emit(Alert("breaker.open", "primary:0", "opened"))
        await delivered(receiver, 1)
        await sender.close()
        running.cancel()
    assert [e["event"] for e in receiver.events()] == ["breaker.open"]
    assert SIGNATURE_HEADER.lower() not in receiver.deliveries[0][0], "no secret: unsigned"
    assert sender.counts == {"sent": 0, "failed": 1, "dropped": 0, "claimed_elsewhere": 0}


async def test_an_occurrence_seen_by_two_processes_is_sent_once(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    with Receiver() as receiver:
        senders = [AlertSender(alert_settings(receiver.url), {}, client, RedisGate(client),
                               prefix="t:") for _ in range(2)]  # fmt: skip
        tasks = [asyncio.create_task(s.run()) for s in senders]
        for sender in senders:
            sender.emit(Alert("breaker.open", "p:0", "opened", dedupe="breaker:p:0:open:17.5"))
        await delivered(receiver, 1)
        for _ in range(100):  # until the second sender has dropped its copy
            if sum(s.counts["claimed_elsewhere"] for s in senders) == 1:
                break
            await asyncio.sleep(0.01)
        for sender, task in zip(senders, tasks, strict=True):
            await sender.close()
            task.cancel()
    assert len(receiver.deliveries) == 1
    assert sum(s.counts["claimed_elsewhere"] for s in senders) == 1
    await client.aclose()


# -- through a real gateway ----------------------------------------------------------------------

PRICING = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def alerting(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path, receiver: Receiver
) -> Iterator[GatewayServer]:
    """Priced models, a small budget (the alert at half of it), a tiny daily-cost threshold."""
    models = {"primary": {**openai_model(primary.openai_url, "p"), "pricing": PRICING},
              "secondary": {**openai_model(secondary.openai_url, "s"), "pricing": PRICING}}  # fmt: skip
    settings = settings_for(
        redis_url, tmp_path / "logs", models, {"default": ["primary", "secondary"]},
        resilience={"health": {"enabled": False}},
        api={"budgets": {"enabled": True, "default_usd": 1.0, "default_max_tokens": 50}},
        alerts={"webhooks": [{"url": receiver.url, "secret": SECRET}], "budget_percent": 50,
                "daily_cost_usd": 0.01, "cost_check_interval_seconds": 0.2},
    )  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        yield server


def chat(base: str, model: str = "default") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return http("POST", base + "/v1/chat/completions", body)[0]


def test_a_breaker_that_opens_alerts_while_requests_never_wait_for_the_receiver(
    alerting: GatewayServer, receiver: Receiver, primary: SimProcess
) -> None:
    receiver.released.clear()  # the receiver holds every answer until the test lets go
    primary.behave(failure_rate=1.0)
    assert [chat(alerting.base, "primary") for _ in range(2)] == [503, 503]
    wait_until(lambda: receiver.of("breaker.open"), what="the breaker.open delivery")
    assert chat(alerting.base, "secondary") == 200, "answered while the receiver is stuck"
    receiver.released.set()
    headers, event = receiver.of("breaker.open")[0]
    assert event["subject"] == "primary:0" and event["details"]["from"] == "closed"
    body = next(b for h, b in receiver.deliveries if h is headers)
    assert signed(headers, body)
    status = json.loads(http("GET", alerting.base + "/api/admin/alerts")[2])
    assert status["webhooks"] == [{"url": f"http://127.0.0.1:{receiver.port}",
                                   "events": ["*"], "signed": True}]  # fmt: skip


def test_budget_and_daily_cost_alerts_come_once(
    alerting: GatewayServer, receiver: Receiver
) -> None:
    """Each turn costs a few cents here: half the $1 budget is crossed once, and the day's
    cost passes $0.01 once, however many turns follow."""
    for _ in range(30):
        if receiver.of("budget.threshold"):
            break
        assert chat(alerting.base) == 200
    wait_until(lambda: receiver.of("budget.threshold"), what="the budget alert")
    wait_until(lambda: receiver.of("cost.daily"), what="the daily cost alert")
    for _ in range(3):
        assert chat(alerting.base) == 200
    budget = receiver.of("budget.threshold")
    assert len(budget) == 1 and budget[0][1]["details"]["budget_usd"] == 1.0
    assert 0.5 <= budget[0][1]["details"]["spent_usd"] < 0.7
    assert len(receiver.of("cost.daily")) == 1


def test_the_dry_run_reports_what_the_receiver_answered(
    alerting: GatewayServer, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    status, _, raw = http("POST", alerting.base + "/api/admin/alerts/test", {})
    answer = json.loads(raw)
    assert status == 200 and answer["ok"] is False
    assert answer["results"][0]["status"] == 500 and answer["results"][0]["retryable"] is True
    status, _, raw = http("POST", alerting.base + "/api/admin/alerts/test", {"url": receiver.url})
    assert status == 200 and json.loads(raw)["ok"] is True
    assert [e["event"] for e in receiver.events()] == ["test", "test"], "no retry on a dry run"
    status, _, raw = http("POST", alerting.base + "/api/admin/alerts/test",
                          {"url": "http://example.invalid/"})  # fmt: skip
    assert status == 404 and json.loads(raw)["error"]["code"] == "webhook_not_found"
