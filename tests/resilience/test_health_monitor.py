"""The health monitor: passive windows, active probes, and the router skipping unhealthy deployments."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.app import create_app
from services.config import HealthSettings
from services.errors import UpstreamConnectError
from services.resilience.health_monitor import HealthMonitor
from tests.helpers import (
    FakeClock,
    GatewayServer,
    SimProcess,
    http,
    openai_model,
    settings_for,
    wait_until,
)


class FakeProvider:
    """Only what the monitor uses: a name and a probe that fails while `up` is False."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise UpstreamConnectError(self.name, "connection refused")


def monitor(provider: FakeProvider, clock: FakeClock, **settings: Any) -> HealthMonitor:
    return HealthMonitor(
        HealthSettings(**settings), {provider.name: provider},  # type: ignore[dict-item]
        clock=clock, rng=random.Random(7),
    )  # fmt: skip


async def test_unhealthy_after_consecutive_probe_failures_and_healed_by_one_success() -> None:
    """Two failed probes in a row mark it unhealthy; the next success heals it. Each flip, and
    only a flip, is told to `on_change` (what the deployment.* alerts hang on)."""
    provider, clock = FakeProvider("d"), FakeClock(100.0)
    health = monitor(provider, clock, unhealthy_after=2)
    flips: list[tuple[str, bool, str | None]] = []
    health.on_change = lambda *flip: flips.append(flip)
    provider.up = False
    assert not await health.probe("d")
    assert health.healthy("d") and flips == []
    assert not await health.probe("d")
    assert not health.healthy("d")
    assert len(flips) == 1 and flips[0][:2] == ("d", False) and flips[0][2]
    assert not await health.probe("d")
    assert len(flips) == 1, "still unhealthy: no news"
    provider.up = True
    assert await health.probe("d")
    assert health.healthy("d") and flips[1] == ("d", True, None)


async def test_probes_run_when_due_on_a_jittered_interval() -> None:
    """probe_due probes only deployments whose jittered interval (+/- 20 %) has passed."""
    provider, clock = FakeProvider("d"), FakeClock(100.0)
    health = monitor(provider, clock, probe_interval_seconds=10)
    await health.probe_due()
    assert provider.probes == 1
    await health.probe_due()
    assert provider.probes == 1  # not due yet
    intervals = [health.next_interval() for _ in range(200)]
    assert 8 <= min(intervals) < 8.5 and 11.5 < max(intervals) <= 12
    clock.now += 12
    await health.probe_due()
    assert provider.probes == 2


def test_passive_window_reports_rates_and_percentiles() -> None:
    """Traffic outcomes feed success rate, latency percentiles and the failure streak."""
    health = monitor(FakeProvider("d"), FakeClock(100.0), window=10)
    for ms in range(1, 9):
        health.observe("d", True, ms / 1000)
    health.observe("d", False, 5.0)
    health.observe("d", False, 5.0)
    summary = health.summary("d")
    assert summary["samples"] == 10 and summary["success_rate"] == 0.8
    assert summary["consecutive_failures"] == 2
    assert summary["latency_ms"]["p50"] == pytest.approx(4.5)
    assert summary["latency_ms"]["p99"] == pytest.approx(7.93)
    assert health.healthy("d")  # traffic failures are the breaker's to judge


@pytest.fixture
def probing_gateway(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> Iterator[GatewayServer]:
    models = {
        "primary": openai_model(primary.openai_url, "primary-upstream"),
        "secondary": openai_model(secondary.openai_url, "secondary-upstream"),
    }
    resilience = {"health": {"probe_interval_seconds": 0.05, "unhealthy_after": 2}}
    settings = settings_for(redis_url, tmp_path / "logs", models,
                            {"default": ["primary", "secondary"]}, resilience=resilience)  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        yield server


def primary_healthy(base: str) -> bool:
    view = json.loads(http("GET", base + "/circuit-breakers")[2])
    return bool(view["circuit_breakers"]["primary:0"]["health"]["healthy"])


def test_router_skips_a_deployment_whose_probes_fail(
    probing_gateway: GatewayServer, primary: SimProcess
) -> None:
    """A primary failing its probes gets no traffic until a probe succeeds again."""
    primary.behave(failure_rate=1.0, failure_status=503)
    wait_until(lambda: not primary_healthy(probing_gateway.base), what="primary marked unhealthy")
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    status, headers, _ = http("POST", probing_gateway.base + "/v1/chat/completions", body)
    assert status == 200 and headers["x-router-model"] == "secondary"
    assert headers["x-router-attempts"] == "1" and primary.stats()["requests"] == 0

    primary.reset()
    wait_until(lambda: primary_healthy(probing_gateway.base), what="primary healthy again")
    status, headers, _ = http("POST", probing_gateway.base + "/v1/chat/completions", body)
    assert headers["x-router-model"] == "primary"
