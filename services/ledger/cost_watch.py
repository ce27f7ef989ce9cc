"""The `cost.daily` alert: every `alerts.cost_check_interval_seconds`, today's total cost (UTC,
all keys, from the ledger's daily aggregates) against `alerts.daily_cost_usd`; once per day
across processes (the alert's claim in Redis lasts two days)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts.events import Alert
from services.alerts.sender import AlertSender
from services.ledger import reports
from services.ledger.costs import NANO_PER_USD, usd


async def check_daily_cost(
    engine: AsyncEngine, alerts: AlertSender, threshold_usd: float, now: float
) -> str | None:
    """Raise the alert if today's cost has passed the threshold; the day it was raised for."""
    day = datetime.fromtimestamp(now, UTC).date().isoformat()
    rows = await reports.daily(engine, 1)
    spent = sum(row["cost_nanousd"] for row in rows if row["day"].isoformat() == day)
    if spent < threshold_usd * NANO_PER_USD:
        return None
    alerts.emit(Alert(
        "cost.daily", day, f"today's cost ${usd(spent)} passed the ${threshold_usd:g} threshold",
        {"day": day, "cost_usd": usd(spent), "threshold_usd": threshold_usd},
        dedupe=f"cost:{day}", dedupe_seconds=2 * 86_400,
    ))  # fmt: skip
    return day


async def watch_daily_cost(
    engine: AsyncEngine,
    alerts: AlertSender,
    threshold_usd: float,
    interval: float,
    clock: Callable[[], float] = time.time,
) -> None:
    """Check on an interval while the process runs; each day's alert is raised once here."""
    raised: str | None = None
    while True:
        await asyncio.sleep(interval)
        today = datetime.fromtimestamp(clock(), UTC).date().isoformat()
        if raised == today:
            continue
        try:
            raised = await check_daily_cost(engine, alerts, threshold_usd, clock()) or raised
        except SQLAlchemyError as exc:
            logger.warning("daily cost check: the ledger database cannot be read ({})",
                           type(exc).__name__)  # fmt: skip
