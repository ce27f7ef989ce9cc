"""/metrics: every SPEC §9 name, parsed by prometheus-client's own parser; workers add up."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.platform.redis_connection import free_port
from tests.helpers import (
    GatewayServer,
    SimProcess,
    api_process,
    healthy,
    http,
    single_model_config,
    wait_until,
)

SPEC_NAMES = {
    "llm_buffer_len", "llm_wal_size_bytes", "llm_attempts_total", "circuit_breaker_state",
    "circuit_breaker_requests_total", "circuit_breaker_failures_total",
    "fallback_chain_tier_usage_total", "llm_request_duration_seconds_bucket",
    "llm_time_to_first_token_seconds_bucket", "llm_tokens_total", "llm_cost_usd_total",
    "gateway_sessions_created_total",
}  # fmt: skip


def samples(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, headers, raw = http("GET", base + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(
    found: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str
) -> float:
    return sum(
        v for got, v in found.get(metric, []) if all(got.get(k) == x for k, x in labels.items())
    )


def test_every_spec_metric_is_exposed(gateway: GatewayServer, primary: SimProcess) -> None:
    """After a session, a fallback and a stream, the exposition parses and carries every name."""
    http("POST", gateway.base + "/initiate_call", {})
    primary.behave(failure_rate=1.0)
    turn = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    assert http("POST", gateway.base + "/v1/chat/completions", turn)[0] == 200
    assert http("POST", gateway.base + "/v1/chat/completions", {**turn, "stream": True})[0] == 200
    found = samples(gateway.base)
    assert set(found) >= SPEC_NAMES, SPEC_NAMES - set(found)
    assert total(found, "fallback_chain_tier_usage_total", tier="fallback") == 2
    # Three attempts (two retries) for the first request; the stream's second failure is the
    # fifth in a row, which opens the breaker before its last retry.
    assert total(found, "llm_attempts_total", deployment="primary:0", outcome="error") == 5
    assert total(found, "circuit_breaker_failures_total", name="primary:0") == 5
    assert total(found, "llm_time_to_first_token_seconds_count", model="secondary") == 1
    assert total(found, "gateway_sessions_created_total") == 1
    assert total(found, "llm_tokens_total", model="secondary", direction="output") > 0
    assert total(found, "circuit_breaker_state", name="secondary:0") == 0


def test_two_workers_add_up(redis_url: str, primary: SimProcess, tmp_path: Path) -> None:
    """With --workers 2 the counters on /metrics are the sum over both processes."""
    config = single_model_config(tmp_path, redis_url, primary)
    port = free_port()
    proc = api_process(config, {}, port, workers=2)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(base + "/readyz"), timeout=60, what="two workers")
        turn = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}

        def chat(_: int) -> int:
            status, _, raw = http("POST", base + "/v1/chat/completions", turn)
            assert status == 200, raw
            return int(json.loads(http("GET", base + "/api/llm/health")[2])["pid"])

        pids: set[int] = set()
        sent = 0
        with ThreadPoolExecutor(16) as pool:
            # Concurrent connections spread over both workers; keep going until both answered.
            while len(pids) < 2 and sent < 800:
                pids.update(pool.map(chat, range(40)))
                sent += 40
        assert len(pids) == 2, "both workers should have answered some requests"
        found = samples(base)
        assert total(found, "fallback_chain_tier_usage_total", tier="primary") == sent
        assert total(found, "llm_attempts_total", deployment="primary:0") == sent
    finally:
        proc.terminate()
        proc.wait(30)
