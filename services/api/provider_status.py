"""Seed 002's provider status fields, from a registry row, its live state and its usage (pure).

display_name          "<model> via <provider kind>", "(local)" when it runs on our hardware
provider_type         local | remote
circuit_state         the breaker's state (also `breaker_state`)
is_available          enabled, healthy and its breaker lets calls through
total_requests        upstream calls made to it in the window (attempts)
successful_requests   of those, the ones that answered
success_rate          percent (seed 002's unit; `/api/llm/metrics` keeps its 0..1 ratio)
avg_response_time_ms  mean time of the requests it answered (else of its calls)
status                disabled | down (open breaker, unhealthy) | degraded (half-open, or
                      under `DEGRADED_BELOW_PERCENT` success) | healthy | idle (no calls yet) |
                      retired (a planner replica that was stopped)
"""

from __future__ import annotations

from typing import Any

DEGRADED_BELOW_PERCENT = 90.0
LIVE_STATUSES = ("healthy", "degraded", "down", "disabled")


def live_status(enabled: bool, healthy: bool, circuit: str | None) -> str:
    """disabled, down or degraded from the live state alone, else healthy."""
    if not enabled:
        return "disabled"
    if circuit == "open" or not healthy:
        return "down"
    return "degraded" if circuit == "half-open" else "healthy"


def provider_status(
    row: dict[str, Any], usage: dict[str, Any] | None, *, live: bool
) -> dict[str, Any]:
    """The seed's fields for one registry row (with `breaker_state`/`healthy` set when live)."""
    attempts = usage["attempts"] if usage else 0
    successes = attempts - usage["failed_attempts"] if usage else 0
    percent = round(100 * successes / attempts, 2) if attempts else None
    average = (usage.get("avg_request_ms") or usage.get("avg_attempt_ms")) if usage else None
    circuit = row.get("breaker_state")
    healthy = row.get("healthy", False)
    available = live and row["enabled"] and healthy and circuit != "open"
    status = (
        live_status(row["enabled"], healthy, circuit) if live or not row["enabled"] else "retired"
    )
    if status == "healthy" and percent is not None and percent < DEGRADED_BELOW_PERCENT:
        status = "degraded"
    elif status == "healthy" and not attempts:
        status = "idle"
    suffix = " (local)" if row["local"] else ""
    return {
        "display_name": f"{row['model']} via {row['kind']}{suffix}",
        "provider_type": "local" if row["local"] else "remote",
        "circuit_state": circuit,
        "is_available": available,
        "total_requests": attempts,
        "successful_requests": successes,
        "success_rate": percent,
        "avg_response_time_ms": average,
        "status": status,
    }
