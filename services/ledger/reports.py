"""The ledger's report queries: usage per deployment, daily totals, recent incidents, latency.

Every query selects a time window by a range on the primary key (ids begin with their
millisecond timestamp; see `window_start_id`), never by a secondary index, and narrows to one
caller's key when asked (tenancy, docs/security.md).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger.db import BILLED_KINDS, daily_costs, plain_row, records


def window_start_id(days: int, now: datetime | None = None) -> str:
    """The smallest record id of the window: ids begin with their millisecond timestamp in 12
    hex digits, so a range on the primary key selects a time window."""
    day = since(days, now)
    return id_at(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def id_at(ts: float) -> str:
    """The smallest record id at or after Unix time `ts`."""
    return f"{int(ts * 1000):012x}"


def since(days: int, now: datetime | None = None) -> date:
    """The first UTC day of a `days`-day window ending today (days=1: today only)."""
    return (now or datetime.now(UTC)).date() - timedelta(days=days - 1)


async def usage_by_provider(
    engine: AsyncEngine, days: int, provider: str | None = None, api_key_id: str | None = None
) -> list[dict[str, Any]]:
    """Per deployment over the window: requests, failures, fallbacks, tokens, cost, latency,
    local flag; `provider` narrows to a deployment, a model or a provider kind (`openai`); one
    key's usage only when `api_key_id` is given."""
    r = records.c
    ok = sa.case((r.outcome == "ok", 1), else_=0)
    fallback = sa.case((r.fallback, 1), else_=0)
    # A request answered by its first call has no attempt row of its own (services/ledger/usage.py).
    implicit = sa.case(
        ((r.kind == "request") & (r.attempts == 1) & (r.outcome == "ok"), 1), else_=0
    )
    query = (
        sa.select(
            r.deployment,
            r.kind,
            r.local,
            sa.func.count().label("calls"),
            sa.func.sum(ok).label("ok"),
            sa.func.sum(implicit).label("implicit_attempts"),
            sa.func.sum(fallback).label("fallbacks"),
            sa.func.sum(r.tokens_in).label("tokens_in"),
            sa.func.sum(r.tokens_out).label("tokens_out"),
            sa.func.sum(r.cost_nanousd).label("cost_nanousd"),
            sa.func.avg(r.duration_ms).label("avg_ms"),
            sa.func.avg(r.ttft_ms).label("avg_ttft_ms"),
        )
        .where(r.id >= window_start_id(days))
        .group_by(r.deployment, r.kind, r.local)
    )
    if provider is not None:
        query = query.where(
            (r.deployment == provider) | (r.model == provider) | (r.provider == provider)
        )
    if api_key_id is not None:
        query = query.where(r.api_key_id == api_key_id)
    async with engine.connect() as conn:
        return [plain_row(row) for row in await conn.execute(query)]


async def daily(
    engine: AsyncEngine, days: int, api_key_id: str | None = None
) -> list[dict[str, Any]]:
    """The daily aggregates of the window, oldest first; for one key, summed from its records
    (the aggregates have no key dimension: one more index on every insert was not worth it)."""
    if api_key_id is not None:
        return await _daily_of_key(engine, days, api_key_id)
    d = daily_costs.c
    query = (
        sa.select(daily_costs).where(d.day >= since(days)).order_by(d.day, d.deployment, d.model)
    )
    async with engine.connect() as conn:
        return [plain_row(row) for row in await conn.execute(query)]


async def _daily_of_key(engine: AsyncEngine, days: int, api_key_id: str) -> list[dict[str, Any]]:
    r = records.c
    query = (
        sa.select(
            r.day,
            sa.func.coalesce(r.deployment, "").label("deployment"),
            r.model,
            sa.func.count().label("requests"),
            sa.func.sum(r.tokens_in).label("tokens_in"),
            sa.func.sum(r.tokens_out).label("tokens_out"),
            sa.func.sum(r.cost_nanousd).label("cost_nanousd"),
        )
        .where(r.id >= window_start_id(days), r.kind.in_(BILLED_KINDS), r.api_key_id == api_key_id)
        .group_by(r.day, r.deployment, r.model)
        .order_by(r.day, r.deployment, r.model)
    )
    async with engine.connect() as conn:
        rows = [plain_row(row) for row in await conn.execute(query)]
    for row in rows:
        if isinstance(row["day"], str):  # SQLite returns the stored text
            row["day"] = date.fromisoformat(row["day"])
    return rows


async def recent_incidents(
    engine: AsyncEngine, since_ts: float, limit: int, api_key_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest requests since `since_ts` that failed over or were not answered by a model
    (fallback, cache, degraded, failed, cancelled), newest first."""
    r = records.c
    query = (
        sa.select(
            r.ts,
            r.request_id,
            r.model,
            r.original_model,
            r.deployment,
            r.status,
            r.outcome,
            r.error,
            r.attempts,
            r.duration_ms,
        )
        .where(r.id >= id_at(since_ts), r.kind == "request", r.fallback | (r.outcome != "ok"))
        .order_by(r.id.desc())
        .limit(limit)
    )
    if api_key_id is not None:
        query = query.where(r.api_key_id == api_key_id)
    async with engine.connect() as conn:
        rows = [plain_row(row) for row in await conn.execute(query)]
    for row in rows:
        ts = row["ts"]
        row["ts"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()
    return rows


async def recent_calls(
    engine: AsyncEngine, since_ts: float, limit: int
) -> dict[str, list[tuple[float, bool]]]:
    """Each deployment's upstream calls since `since_ts` as (milliseconds, succeeded), the newest
    `limit` calls in all: its attempt rows, and the requests its first call answered (those have
    no attempt row of their own, services/ledger/usage.py)."""
    r = records.c
    implied = (r.kind == "request") & (r.attempts == 1) & (r.outcome == "ok")
    query = (
        sa.select(r.deployment, r.duration_ms, r.outcome)
        .where(r.id >= id_at(since_ts), r.deployment.is_not(None), (r.kind == "attempt") | implied)
        .order_by(r.id.desc())
        .limit(limit)
    )
    out: dict[str, list[tuple[float, bool]]] = {}
    async with engine.connect() as conn:
        for deployment, duration, outcome in await conn.execute(query):
            if outcome != "cancelled":  # a hedge that lost its race says nothing of the upstream
                out.setdefault(deployment, []).append((float(duration), outcome == "ok"))
    return out
