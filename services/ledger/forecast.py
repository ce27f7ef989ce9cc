"""The month-end cost projection of `/api/llm/costs` (pure).

    projected = cost so far this month (UTC) + daily rate x days left in the month

The daily rate is the mean cost of the last `RATE_DAYS` complete UTC days before today, over the
days the ledger has seen traffic since (a gateway started three days ago averages over those
three, not over seven with four empty ones). With no complete day yet, today's cost so far is
scaled to a whole day, once at least `MIN_HOURS_TODAY` hours of it have passed; before that there
is no projection (None). Days left count the rest of today as a fraction: at noon on the 30th of
a 30-day month, half a day is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

RATE_DAYS = 7
MIN_HOURS_TODAY = 1.0


@dataclass(frozen=True, slots=True)
class Projection:
    month_to_date_nanousd: int
    daily_rate_nanousd: int | None
    days_left: float
    projected_nanousd: int | None
    method: str


def month_end(now: datetime) -> datetime:
    """The first instant of the next UTC month."""
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def window_days(now: datetime) -> int:
    """How many days of daily totals a projection needs (this month and the rate's days)."""
    return max(now.day, RATE_DAYS + 1)


def project_month(cost_by_day: Mapping[date, int], now: datetime) -> Projection:
    """The projection from each UTC day's cost in nano-USD (days without traffic may be absent)."""
    today = now.date()
    month_start = today.replace(day=1)
    so_far = sum(cost for day, cost in cost_by_day.items() if month_start <= day <= today)
    days_left = (month_end(now) - now).total_seconds() / 86_400
    complete = [today - timedelta(days=n) for n in range(RATE_DAYS, 0, -1)]
    seen = [day for day in complete if day in cost_by_day]
    if seen:
        counted = [day for day in complete if day >= seen[0]]  # since the first day with traffic
        rate = round(sum(cost_by_day.get(day, 0) for day in counted) / len(counted))
        method = f"mean of the last {len(counted)} complete UTC day(s)"
    else:
        midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
        hours = (now - midnight).total_seconds() / 3600
        if hours < MIN_HOURS_TODAY:
            return Projection(so_far, None, days_left, None, "no complete day yet")
        rate = round(cost_by_day.get(today, 0) * 24 / hours)
        method = f"today's first {hours:.1f} h scaled to a day (no complete day yet)"
    return Projection(so_far, rate, days_left, so_far + round(rate * days_left), method)
