"""How long to wait before retrying the same deployment: full-jitter exponential backoff.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter") draws the delay uniformly
from [0, min(cap, base * 2**retry)]: retries from many clients spread out instead of arriving in
waves. An upstream's `Retry-After` replaces the draw when it says to wait longer; one longer than
the caller is willing to wait is reported as `None` so the caller moves on instead of sleeping.
"""

from __future__ import annotations


def backoff_delay(
    retry: int,
    *,
    base: float,
    cap: float,
    draw: float,
    retry_after: float | None = None,
    max_retry_after: float = float("inf"),
) -> float | None:
    """The delay before retry number `retry` (1 = the first retry); `draw` is uniform in [0, 1)."""
    if retry_after is not None:
        if retry_after > max_retry_after:
            return None
        ceiling = min(cap, base * 2.0 ** (retry - 1))
        return max(retry_after, draw * ceiling)
    return draw * min(cap, base * 2.0 ** (retry - 1))
