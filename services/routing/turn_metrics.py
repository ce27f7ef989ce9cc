"""The metrics observer: each finished turn into the Prometheus counters and histograms."""

from __future__ import annotations

from services.platform.metrics import Metrics
from services.routing.turn import TurnRecord


class TurnMetrics:
    """Counts requests, tiers, latency, tokens, cost, attempts and upstream anomalies."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def turn_started(self) -> None:
        """Counted when it ends."""

    def turn_finished(self, turn: TurnRecord) -> None:
        metrics = self._metrics
        if turn.deployment is not None and turn.malformed:
            metrics.anomaly(turn.deployment, "malformed_chunk", turn.malformed)
        if turn.deployment is not None and turn.usage_rejected:
            metrics.anomaly(turn.deployment, "usage_rejected")
        metrics.request(turn.model, turn.route or "failed", turn.seconds, turn.ttft_seconds)
        if turn.answered:
            metrics.usage(turn.model, turn.tokens_in, turn.tokens_out, turn.cost_nanousd)
        for attempt in turn.attempts:
            metrics.attempt(attempt.deployment, attempt.model, attempt.outcome, attempt.counted)
