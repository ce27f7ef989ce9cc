"""The month-end projection (services/ledger/forecast.py), with the time given."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.ledger.forecast import project_month, window_days

USD = 1_000_000_000  # nano-dollars


def test_a_week_of_history_projects_its_mean_over_the_rest_of_the_month() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 10.5 days left in November
    days = {date(2026, 11, d): 2 * USD for d in range(1, 20)} | {date(2026, 11, 20): 1 * USD}
    forecast = project_month(days, now)
    assert forecast.month_to_date_nanousd == 39 * USD
    assert forecast.daily_rate_nanousd == 2 * USD
    assert forecast.days_left == 10.5
    assert forecast.projected_nanousd == 39 * USD + 21 * USD
    assert forecast.method == "mean of the last 7 complete UTC day(s)"


def test_a_three_day_old_gateway_averages_over_its_three_days() -> None:
    now = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    days = {date(2026, 11, 17): 3 * USD, date(2026, 11, 19): 6 * USD}  # the 18th was quiet
    forecast = project_month(days, now)
    assert forecast.daily_rate_nanousd == 3 * USD, "(3 + 0 + 6) / 3, not / 7"
    assert forecast.projected_nanousd == 9 * USD + 11 * 3 * USD


def test_last_month_counts_for_the_rate_but_not_the_month_to_date() -> None:
    now = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    days = {date(2026, 11, d): 1 * USD for d in range(20, 31)} | {date(2026, 12, 1): 1 * USD}
    forecast = project_month(days, now)
    assert forecast.month_to_date_nanousd == 1 * USD
    assert forecast.daily_rate_nanousd == 1 * USD
    assert forecast.projected_nanousd == 1 * USD + 30 * USD


@pytest.mark.parametrize(("hour", "expected"), [(0.5, None), (6.0, 4 * USD)])
def test_the_first_day_is_scaled_once_an_hour_has_passed(hour: float, expected: int | None) -> None:
    now = datetime(2026, 11, 30, int(hour), int(hour % 1 * 60), tzinfo=UTC)
    forecast = project_month({date(2026, 11, 30): 1 * USD}, now)
    assert forecast.daily_rate_nanousd == expected
    if expected is None:
        assert forecast.projected_nanousd is None and forecast.method == "no complete day yet"
    else:  # $1 in 6 h is $4 a day; 18 h of November are left
        assert forecast.projected_nanousd == 1 * USD + 3 * USD


def test_the_window_covers_the_month_and_the_rate_days() -> None:
    assert window_days(datetime(2026, 11, 3, tzinfo=UTC)) == 8
    assert window_days(datetime(2026, 11, 30, tzinfo=UTC)) == 30
