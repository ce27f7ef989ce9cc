"""The ledger's views (SPEC §5 `/api/llm/*`): provider registry, usage, records, switches.

    GET  /api/llm/providers?days=              the registry, with live breaker and health state
                                               and seed 002's status fields
    GET  /api/llm/metrics?provider=&days=      usage per deployment over the window
    POST /api/llm/record                       usage that happened outside the gateway
    POST /api/llm/providers/{name}/enable      {"enabled": bool}, effective in every process
    GET  /api/llm/health                       providers by status, fallback availability, and
                                               the ledger's own health

Costs and trends are in services/api/report_views.py. `days` is 1..3650 (1 = today, UTC).
"Provider" here is a deployment name (`large-model:0`): that is the unit with its own breaker,
pricing and registry row; `metrics?provider=` also takes a model or a provider kind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.api.json_routes import JsonBodyRoute
from services.api.ledger_access import engine, own_key, query, scope
from services.api.ledger_schemas import EnableRequest, ExternalUsage
from services.api.parts import gateway_parts
from services.api.provider_status import LIVE_STATUSES, live_status, provider_status
from services.api.responses import json_response
from services.config import TIERS, Deployment, Settings
from services.errors import InvalidRequest, LedgerUnavailable, NotFound
from services.ledger.costs import cost_nanousd, usd
from services.ledger.records import UsageRecord, record_id
from services.ledger.runtime import LedgerRuntime
from services.ledger.switches import OperatorSwitches
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor

Days = Annotated[int, Query(ge=1, le=3650, description="Window in UTC days, today included.")]


class LedgerViewParts(Protocol):
    """What these views read of the gateway."""

    @property
    def settings(self) -> Settings: ...
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...
    @property
    def switches(self) -> OperatorSwitches: ...
    @property
    def breakers(self) -> BreakerStore: ...
    @property
    def health(self) -> HealthMonitor: ...
    @property
    def deployment_table(self) -> Mapping[str, tuple[str, Deployment]]: ...
    @property
    def disabled(self) -> set[str]: ...


Parts = Annotated[LedgerViewParts, Depends(gateway_parts)]
routes = APIRouter(prefix="/api/llm", route_class=JsonBodyRoute)


def known(parts: LedgerViewParts, provider: str) -> None:
    """404 unless `provider` names a deployment, a model or a provider kind (`openai`)."""
    table = parts.deployment_table  # live: planner replicas included
    if provider in table or provider in parts.settings.models:
        return
    if any(deployment.provider == provider for _, deployment in table.values()):
        return
    raise NotFound(f"no provider, model or deployment named '{provider}'",
                   code="provider_not_found")  # fmt: skip


def known_deployment(parts: LedgerViewParts, name: str) -> None:
    if name not in parts.deployment_table:
        raise NotFound(f"no deployment named '{name}'", code="provider_not_found")


@routes.get("/providers")
async def providers(parts: Parts, days: Days = 7) -> Response:
    """The provider registry (priority, enabled, breaker settings) with live state, and seed
    002's status fields from the window's usage (the caller's own, for a client key)."""
    from services.ledger import db as ledger_db  # imported on use: services/ledger/runtime.py
    from services.ledger import reports

    rows = await query(ledger_db.provider_rows(engine(parts)))
    usage = usage_entries(
        await query(reports.usage_by_provider(engine(parts), days, api_key_id=own_key()))
    )
    for row in rows:
        name = row["name"]
        row["updated_at"] = row["updated_at"].isoformat()
        row["enabled"] = row["enabled"] and name not in parts.disabled
        live = name in parts.deployment_table
        if live:
            row["breaker_state"] = parts.breakers.state(name).state
            row["healthy"] = parts.health.healthy(name)
        row.update(provider_status(row, usage.get(name), live=live))
    return json_response({"days": days, "scope": scope(), "providers": rows})


@routes.get("/metrics")
async def metrics(parts: Parts, days: Days = 7, provider: str | None = None) -> Response:
    """Per deployment: requests, fallbacks, success rate, attempts, tokens, cost, latency;
    `provider` narrows to a deployment, a model or a provider kind."""
    if provider is not None:
        known(parts, provider)
    from services.ledger import reports  # imported on use: services/ledger/runtime.py

    rows = await query(reports.usage_by_provider(engine(parts), days, provider, own_key()))
    return json_response({"days": days, "provider": provider, "scope": scope(),
                          "providers": usage_entries(rows)})  # fmt: skip


def usage_entries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-deployment usage rows summed into one entry per deployment."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["deployment"] or "(none)"
        entry = out.setdefault(
            name,
            {
                "requests": 0,
                "fallbacks": 0,
                "attempts": 0,
                "failed_attempts": 0,
                "tokens_in": 0,
                "tokens_out": 0,
                "cost_nanousd": 0,
            },
        )
        if row["kind"] == "attempt":
            entry["attempts"] += row["calls"]
            entry["failed_attempts"] += row["calls"] - row["ok"]
            entry["avg_attempt_ms"] = round(row["avg_ms"] or 0, 2)
        else:
            entry["attempts"] += row["implicit_attempts"] or 0
            entry["requests"] += row["calls"]
            entry["fallbacks"] += row["fallbacks"] or 0
            entry["tokens_in"] += row["tokens_in"] or 0
            entry["tokens_out"] += row["tokens_out"] or 0
            entry["cost_nanousd"] += row["cost_nanousd"] or 0
            entry["avg_request_ms"] = round(row["avg_ms"] or 0, 2)
            if row["avg_ttft_ms"] is not None:
                entry["avg_ttft_ms"] = round(row["avg_ttft_ms"], 2)
    for entry in out.values():
        entry["cost_usd"] = usd(entry.pop("cost_nanousd"))
        attempts = entry["attempts"]
        entry["success_rate"] = (
            round((attempts - entry["failed_attempts"]) / attempts, 4) if attempts else None
        )
    return out


@routes.post("/record", status_code=201)
async def record(usage: ExternalUsage, parts: Parts) -> Response:
    """Count usage that happened outside the gateway (priced from config unless given)."""
    runtime = parts.ledger_runtime
    if runtime is None:
        raise LedgerUnavailable("the usage ledger is disabled (ledger.enabled: false)")
    when = usage.timestamp or datetime.now(UTC)
    if when.tzinfo is None:
        raise InvalidRequest("timestamp needs a time zone (e.g. 2026-01-31T12:00:00Z)",
                             code="invalid_timestamp")  # fmt: skip
    if when.timestamp() > time.time() + 300:
        raise InvalidRequest("timestamp is in the future", code="invalid_timestamp")
    model = parts.settings.models.get(usage.model)
    warning = None
    if usage.cost_usd is not None:
        cost = round(usage.cost_usd * 1_000_000_000)
    elif model is not None:
        cost = cost_nanousd(model.pricing, usage.tokens_in, usage.tokens_out)
    else:  # the tokens still count; refusing would lose them
        cost = 0
        warning = (
            f"model '{usage.model}' has no configured pricing: cost recorded as 0 (send cost_usd)"
        )
    status = usage.http_status
    entry = UsageRecord(
        kind="external", request_id=f"external-{int(when.timestamp() * 1000)}",
        model=usage.model, status=status, outcome="ok" if status < 400 else "error",
        tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost_nanousd=cost,
        duration_ms=usage.milliseconds, deployment=usage.provider, provider="external",
        local=usage.local or bool(model and model.local), ts=when.timestamp(),
        id=record_id(when.timestamp()),  # ids carry their time: window queries use them
    )  # fmt: skip
    runtime.ledger.append([entry])
    answer = {"recorded": True, "success": True, "id": entry.id, "cost_usd": usd(cost),
              "priced": warning is None}  # fmt: skip
    if warning is not None:
        answer["warning"] = warning
    return json_response(answer, 201)


@routes.post("/providers/{name:path}/enable")
async def enable(name: str, body: EnableRequest, parts: Parts) -> Response:
    """Switch a provider on or off; routing follows at once here, within a sync elsewhere."""
    known_deployment(parts, name)
    await parts.switches.set_enabled(name, body.enabled)
    return json_response({"name": name, "enabled": body.enabled})


def routing_health(parts: LedgerViewParts) -> dict[str, Any]:
    """Seed 002's summary: deployments counted by live status, and whether the default
    selector still has a step to fall back to (two or more of its steps usable now)."""
    table, breakers = parts.deployment_table, parts.breakers
    statuses = {
        name: live_status(
            name not in parts.disabled, parts.health.healthy(name), breakers.state(name).state
        )
        for name in table
    }
    usable_models = {
        model for name, (model, _) in table.items()
        if statuses[name] in ("healthy", "degraded") and breakers.usable(name)
    }  # fmt: skip
    default = parts.settings.sessions.default_selector
    steps = parts.settings.chain_steps().get(default, [default])
    usable = [step for step in steps if step in TIERS or step in usable_models]
    return {
        "providers": {s: sum(v == s for v in statuses.values()) for s in LIVE_STATUSES},
        "total_providers": len(statuses),
        "default_selector": default,
        "usable_steps": usable,
        "fallback_available": len(usable) >= 2,
    }


@routes.get("/health")
async def health(parts: Parts) -> Response:
    """Providers by status and fallback availability (seed 002), and the ledger: database
    reachable, buffer, WAL, last flush and last write."""
    runtime = parts.ledger_runtime
    routing = routing_health(parts)
    if runtime is None:
        return json_response({**routing, "enabled": False})
    ledger = runtime.state()
    db_ok = await runtime.database_ok()
    return json_response(
        {
            **routing,
            "enabled": True,
            "db_ok": db_ok,
            "database": runtime.database_backend,
            "writer": ledger.writer,
            "buffer_len": ledger.buffer_len,
            "wal_size_bytes": ledger.wal_size_bytes,
            "last_flush_ms": ledger.last_flush_ms,
            "last_db_write": ledger.last_db_write.isoformat() if ledger.last_db_write else None,
            "recorded_by_this_process": runtime.ledger.recorded,
            "pid": os.getpid(),
        },
        200 if db_ok else 503,
    )
