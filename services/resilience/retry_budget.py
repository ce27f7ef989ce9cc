"""The retry budget: retries and fallbacks may add at most a fixed share of recent traffic.

Modelled on Finagle's RetryBudget: every request deposits `ratio` of a token, every retry or
fallback withdraws a whole one, and deposits count only for `window_seconds`. A reserve of
`min_per_second` tokens per second of the window lets a quiet gateway still retry. During an
outage the breakers stop first attempts; this bounds what is left (attempts that fail before
their breaker trips, retries on the last usable deployment), so upstream load stays below
(1 + ratio) times the client requests plus the reserve. Per process, in memory: it protects
upstreams from this process's amplification and costs nothing on the hot path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RetryBudget:
    """A token bucket over a sliding window of one-second slots."""

    def __init__(
        self,
        *,
        ratio: float,
        min_per_second: float,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._slots = max(1, math.ceil(window_seconds))
        self._reserve = min_per_second * window_seconds
        self._clock = clock
        # Per slot: the second it belongs to, requests deposited, tokens withdrawn.
        self._second = [-1] * self._slots
        self._deposits = [0] * self._slots
        self._withdrawals = [0] * self._slots
        self.denied = 0

    def _slot(self) -> int:
        second = int(self._clock())
        i = second % self._slots
        if self._second[i] != second:
            self._second[i], self._deposits[i], self._withdrawals[i] = second, 0, 0
        return i

    def balance(self) -> float:
        """Tokens available now."""
        self._slot()
        now = int(self._clock())
        live = [i for i, s in enumerate(self._second) if now - s < self._slots]
        deposits = sum(self._deposits[i] for i in live)
        withdrawals = sum(self._withdrawals[i] for i in live)
        return self._reserve + self._ratio * deposits - withdrawals

    def deposit(self) -> None:
        """A client request arrived."""
        self._deposits[self._slot()] += 1

    def try_withdraw(self) -> bool:
        """Take a token for one retry or fallback; False (and counted) when the budget is spent."""
        if self.balance() >= 1:
            self._withdrawals[self._slot()] += 1
            return True
        self.denied += 1
        return False
