"""The retry budget on a fake clock: a share of recent requests plus a reserve, then denial."""

from __future__ import annotations

from services.resilience.retry_budget import RetryBudget
from tests.helpers import FakeClock


def test_reserve_then_ratio_of_requests_then_denied() -> None:
    """With a reserve of 2 and 20 % of 10 requests, exactly 4 retries pass and the 5th is denied."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.2, window_seconds=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    granted = [budget.try_withdraw() for _ in range(5)]
    assert granted == [True, True, True, True, False]
    assert budget.denied == 1


def test_deposits_and_withdrawals_expire_with_the_window() -> None:
    """After the window has passed the spent budget is whole again (reserve only)."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.1, window_seconds=5, clock=clock)
    budget.deposit()
    assert budget.balance() == 1.5
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 5
    assert budget.balance() == 0.5  # the deposit and the withdrawal both aged out
    budget.deposit()
    assert budget.try_withdraw()


def test_an_outage_cannot_multiply_load() -> None:
    """1,000 requests that all want a retry get at most ratio * 1,000 + reserve retries."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=1, window_seconds=10, clock=clock)
    retries = 0
    for i in range(1000):
        clock.now = 1000 + i * 0.01  # 100 requests/s for 10 s
        budget.deposit()
        retries += budget.try_withdraw()
    assert 200 <= retries <= 200 + 10
