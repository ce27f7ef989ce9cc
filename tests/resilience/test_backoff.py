"""Full-jitter backoff bounds and Retry-After handling."""

from __future__ import annotations

import pytest

from services.resilience.backoff import backoff_delay


@pytest.mark.parametrize(("retry", "ceiling"), [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (20, 5.0)])
def test_delay_is_drawn_between_zero_and_the_capped_exponential(retry: int, ceiling: float) -> None:
    """The draw spans [0, min(cap, base * 2**(retry-1))]."""
    assert backoff_delay(retry, base=0.2, cap=5.0, draw=0.0) == 0.0
    assert backoff_delay(retry, base=0.2, cap=5.0, draw=0.5) == pytest.approx(ceiling / 2)
    assert backoff_delay(retry, base=0.2, cap=5.0, draw=0.999999) == pytest.approx(
        ceiling, rel=1e-5
    )


def test_retry_after_is_a_floor() -> None:
    """An upstream's Retry-After is waited at least, even when the draw is smaller."""
    assert backoff_delay(1, base=0.2, cap=5.0, draw=0.1, retry_after=2.0) == 2.0
    assert backoff_delay(3, base=1.0, cap=5.0, draw=0.9, retry_after=0.5) == pytest.approx(3.6)


def test_retry_after_beyond_the_limit_means_do_not_wait() -> None:
    """A Retry-After longer than max_retry_after gives None: move on instead of sleeping."""
    assert backoff_delay(1, base=0.2, cap=5.0, draw=0.5, retry_after=30, max_retry_after=10) is None
    assert backoff_delay(1, base=0.2, cap=5.0, draw=0.5, retry_after=10, max_retry_after=10) == 10
