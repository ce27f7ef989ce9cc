"""Seed 000's demo endpoints run real turns through the real chain walk, against real simulated
upstreams, and report them in the seed's shape; the turns are recorded like any other."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import GatewayServer, SimProcess, http, wait_until


def post(base: str, path: str, body: Any = None) -> dict[str, Any]:
    status, _, raw = http("POST", base + path, body)
    assert status == 200, raw
    return dict(json.loads(raw))


def test_run_single_reports_the_failover_it_really_made(
    gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """The primary fails every call: the turn is answered by the secondary after the primary's
    retries; a model that is not configured runs the default chain and says so."""
    primary.behave(failure_rate=1.0)
    result = post(gateway.base, "/api/admin/demo/run-single", {"prompt": "hi", "model": "gpt-4"})
    assert result["note"] == "'gpt-4' is no configured model or chain; ran 'default' instead"
    assert result["success"] is True and result["final_model"] == "secondary"
    assert result["route"] == "fallback" and result["attempted_models"] == ["primary", "secondary"]
    assert result["attempts"] == primary.stats()["requests"] + secondary.stats()["requests"] == 4
    assert result["tokens_generated"] > 0 and result["duration_ms"] > 0
    assert result["demo_results"] == [{k: v for k, v in result.items() if k != "demo_results"}]

    summary = json.loads(http("GET", gateway.base + "/api/admin/demo/summary")[2])
    assert summary["fallback_statistics"] == {
        "total_fallback_attempts": 1,
        "total_fallback_successes": 1,
        "success_rate": 100.0,
    }
    assert summary["current_metrics"]["attempts_total"] == 4

    def recorded() -> bool:
        usage = json.loads(http("GET", gateway.base + "/api/llm/metrics?days=1")[2])["providers"]
        return usage.get("secondary:0", {}).get("fallbacks") == 1

    wait_until(recorded, what="the demo turn in the ledger")


def test_a_failed_demo_turn_is_reported_not_raised(
    gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """Both models down on the chain without tiers: 200 with `success: false` and the error."""
    primary.behave(failure_rate=1.0)
    secondary.behave(failure_rate=1.0)
    result = post(gateway.base, "/api/admin/demo/run-single", {"model": "bare"})
    assert result["success"] is False and result["final_model"] is None
    assert result["attempted_models"] == ["primary", "secondary"] and result["error"]
    assert "note" not in result


def test_run_scenarios_runs_the_default_then_each_chain(gateway: GatewayServer) -> None:
    answer = post(gateway.base, "/api/admin/demo/run-scenarios")
    assert [r["selector"] for r in answer["demo_results"]] == ["default", "bare"]
    assert all(r["success"] and r["final_model"] == "primary" for r in answer["demo_results"])
    assert answer["summary"]["current_metrics"]["attempts_total"] == 2
    status, _, raw = http("POST", gateway.base + "/api/admin/demo/run-single", {"prompt": ""})
    assert status == 422 and json.loads(raw)["error"]["code"] == "invalid_schema"
