"""The ledger's reports: costs (with savings and the month-end projection) and daily trends, as
JSON or CSV (`?format=csv`, or `Accept: text/csv`).

    GET /api/llm/costs?days=30    totals, local vs remote, savings against the reference model,
                                  per deployment, and `projected_period_cost_usd` for this UTC
                                  month (services/ledger/forecast.py says how)
    GET /api/llm/trends?days=30   per UTC day: requests, tokens and cost, per deployment

A client key sees its own usage only; the admin key (or a keyless gateway) everyone's.
CSV rows are the per-deployment (costs) or per-day-and-deployment (trends) lines of the JSON,
with exact dollars, so they sum to its totals.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from services.api.csv_reports import JSON_OR_CSV, Format, csv_response, exact_usd, wants_csv
from services.api.ledger_access import engine, own_key, query, scope
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.config import Settings
from services.ledger.costs import cost_nanousd, savings, usd
from services.ledger.forecast import project_month, window_days
from services.ledger.runtime import LedgerRuntime

Days = Annotated[int, Query(ge=1, le=3650, description="Window in UTC days, today included.")]
FormatQuery = Annotated[Format | None, Query(description="csv, or json (default; also by Accept).")]
COST_COLUMNS = ("deployment", "requests", "tokens_in", "tokens_out", "cost_usd", "local")
TREND_COLUMNS = ("day", "deployment", "requests", "tokens_in", "tokens_out", "cost_usd")


class ReportParts(Protocol):
    """What these views read of the gateway."""

    @property
    def settings(self) -> Settings: ...
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...


Parts = Annotated[ReportParts, Depends(gateway_parts)]
routes = APIRouter(prefix="/api/llm")


def per_deployment(billed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The billed usage rows summed per deployment (nano-dollars), sorted by name."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "cost_nanousd": 0, "tokens_in": 0, "tokens_out": 0}
    )
    for r in billed:
        entry = out[r["deployment"] or "(none)"]
        entry["requests"] += r["calls"]
        entry["cost_nanousd"] += r["cost_nanousd"] or 0
        entry["tokens_in"] += r["tokens_in"] or 0
        entry["tokens_out"] += r["tokens_out"] or 0
        entry["local"] = bool(r["local"])
    return dict(sorted(out.items()))


async def projection(parts: ReportParts, now: datetime) -> dict[str, Any]:
    """This UTC month's projected cost, and how it was reached."""
    from services.ledger import reports  # imported on use: services/ledger/runtime.py

    rows = await query(reports.daily(engine(parts), window_days(now), own_key()))
    by_day: dict[date, int] = defaultdict(int)
    for row in rows:
        by_day[row["day"]] += row["cost_nanousd"]
    forecast = project_month(by_day, now)
    return {
        "projected_period_cost_usd": (
            usd(forecast.projected_nanousd) if forecast.projected_nanousd is not None else None
        ),
        "projection": {
            "period": now.strftime("%Y-%m"),
            "month_to_date_usd": usd(forecast.month_to_date_nanousd),
            "daily_rate_usd": (
                usd(forecast.daily_rate_nanousd)
                if forecast.daily_rate_nanousd is not None
                else None
            ),
            "days_left": round(forecast.days_left, 3),
            "method": forecast.method,
        },
    }


@routes.get("/costs", responses=JSON_OR_CSV)
async def costs(
    request: Request, parts: Parts, days: Days = 30, format: FormatQuery = None
) -> Response:
    """Total cost, local vs remote requests, savings against the reference model, the month-end
    projection; per deployment."""
    from services.ledger import db as ledger_db  # imported on use: services/ledger/runtime.py
    from services.ledger import reports

    rows = await query(reports.usage_by_provider(engine(parts), days, api_key_id=own_key()))
    billed = [r for r in rows if r["kind"] in ledger_db.BILLED_KINDS]
    by_provider = per_deployment(billed)
    if wants_csv(request, format):
        lines = ({"deployment": name, **e, "cost_usd": exact_usd(e["cost_nanousd"])}
                 for name, e in by_provider.items())  # fmt: skip
        return csv_response(COST_COLUMNS, lines, f"costs-{days}d.csv")
    actual = sum(e["cost_nanousd"] for e in by_provider.values())
    tokens_in = sum(e["tokens_in"] for e in by_provider.values())
    tokens_out = sum(e["tokens_out"] for e in by_provider.values())
    hypothetical = cost_nanousd(parts.settings.ledger.reference_pricing, tokens_in, tokens_out)
    saved, percent = savings(actual, hypothetical)
    reference = parts.settings.ledger.reference_model
    # Seed 002's name for the same figure, where it is true: its reference model is Claude.
    seed_alias = (
        {"hypothetical_claude_cost_usd": usd(hypothetical)} if "claude" in reference else {}
    )
    return json_response(
        {
            "days": days,
            "scope": scope(),
            "total_cost_usd": usd(actual),
            "total_requests": sum(r["calls"] for r in billed),
            "local_requests": sum(r["calls"] for r in billed if r["local"]),
            "remote_requests": sum(r["calls"] for r in billed if not r["local"]),
            "total_tokens_in": tokens_in,
            "total_tokens_out": tokens_out,
            "reference_model": reference,
            "hypothetical_reference_cost_usd": usd(hypothetical),
            **seed_alias,
            "estimated_savings_usd": usd(saved),
            "savings_percentage": percent,
            **(await projection(parts, datetime.now(UTC))),
            "by_provider": {
                name: {**{k: v for k, v in e.items() if k != "cost_nanousd"},
                       "cost_usd": usd(e["cost_nanousd"])}
                for name, e in by_provider.items()
            },
        }
    )  # fmt: skip


@routes.get("/trends", responses=JSON_OR_CSV)
async def trends(
    request: Request, parts: Parts, days: Days = 30, format: FormatQuery = None
) -> Response:
    """Daily (UTC) requests, tokens and cost per deployment, oldest day first."""
    from services.ledger import reports  # imported on use: services/ledger/runtime.py

    rows = await query(reports.daily(engine(parts), days, own_key()))
    by_day: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        providers = by_day.setdefault(row["day"].isoformat(), {})
        entry = providers.setdefault(
            row["deployment"] or "(none)",
            {"requests": 0, "tokens_in": 0, "tokens_out": 0, "cost_nanousd": 0},
        )
        for field in entry:
            entry[field] += row[field]
    if wants_csv(request, format):
        lines = ({"day": day, "deployment": name, **e, "cost_usd": exact_usd(e["cost_nanousd"])}
                 for day, providers in by_day.items() for name, e in providers.items())  # fmt: skip
        return csv_response(TREND_COLUMNS, lines, f"trends-{days}d.csv")
    daily = [
        {
            "day": day,
            "cost_usd": usd(sum(e["cost_nanousd"] for e in providers.values())),
            "requests": sum(e["requests"] for e in providers.values()),
            "providers": {
                name: {**{k: v for k, v in e.items() if k != "cost_nanousd"},
                       "cost_usd": usd(e["cost_nanousd"])}
                for name, e in providers.items()
            },
        }
        for day, providers in by_day.items()
    ]  # fmt: skip
    return json_response({"days": days, "scope": scope(), "daily": daily})
