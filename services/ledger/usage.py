"""From a finished request to its ledger records and metrics: tokens, cost, attempts.

Tokens come from the upstream's `usage` (streams ask for a final usage chunk; the Anthropic
adapter translates its own). When an answer carries none, tokens are estimated at one per four
characters, rounded up, and the record is marked `estimated`. Costs use the answering model's
pricing; cache and degraded answers cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from services.api.rate_limit import RateLimiter
from services.capacity.state import LoadReporter
from services.config import Deployment, Settings
from services.ledger.costs import cost_nanousd, usd
from services.ledger.wal import Ledger, UsageRecord
from services.platform.metrics import Metrics
from services.platform.request_context import caller_var
from services.routing.outcomes import Attempt, Route

Json = dict[str, Any]


def estimate_tokens(text_chars: int) -> int:
    """A conservative token count for text of this many characters."""
    return math.ceil(text_chars / 4)


def prompt_chars(request: Json) -> int:
    """Characters of text in a request's messages."""
    total = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


def tokens_of(
    usage: Mapping[str, Any] | None, request: Json, answer_chars: int
) -> tuple[int, int, bool]:
    """(tokens in, tokens out, estimated) from an upstream usage block, else estimated."""
    if usage and "prompt_tokens" in usage:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), False
    return estimate_tokens(prompt_chars(request)), estimate_tokens(answer_chars), True


def answer_chars(body: Json) -> int:
    """Characters of text in a completion's choices."""
    return sum(
        len(str((c.get("message") or {}).get("content") or "")) for c in body.get("choices") or ()
    )


class RequestIds(NamedTuple):
    """What ties a request's records together."""

    request_id: str
    session_id: str | None
    selector: str


class UsageRecorder:
    """Turns finished requests into ledger records and metric updates."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger | None,
        metrics: Metrics,
        deployments: Mapping[str, tuple[str, Deployment]] | None = None,
        load: LoadReporter | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._limiter = limiter  # tokens count against the caller's per-minute budget
        self._load = load  # the capacity planner's view of traffic; `begin` is the caller's
        self._ledger = ledger
        self._metrics = metrics
        self._pricing = {name: m.pricing for name, m in settings.models.items()}
        self._local = {name: m.local for name, m in settings.models.items()}
        # By name, including replicas the capacity planner adds later (the gateway's live table).
        self._deployments = (
            deployments
            if deployments is not None
            else {name: (model, d) for model, name, d in settings.deployments()}
        )

    def _provider_kind(self, deployment: str | None) -> str | None:
        found = self._deployments.get(deployment or "")
        return found[1].provider if found is not None else None

    def answered(
        self,
        route: Route,
        *,
        request: Json,
        request_id: str,
        session_id: str | None,
        selector: str,
        usage: Mapping[str, Any] | None,
        chars_out: int,
        seconds: float,
        status: int = 200,
        outcome: str | None = None,
    ) -> None:
        """A request that got an answer (possibly from a tier, possibly cut short mid-stream)."""
        billed = route.route in {"primary", "fallback"}
        tokens_in, tokens_out, estimated = (
            tokens_of(usage, request, chars_out) if billed else (0, 0, False)
        )
        pricing = self._pricing.get(route.model)
        cost = cost_nanousd(pricing, tokens_in, tokens_out) if billed and pricing else 0
        tier = route.route
        ids = RequestIds(request_id, session_id, selector)
        rows = [
            UsageRecord(
                kind="request",
                model=route.model,
                status=status,
                outcome=outcome or ("ok" if billed else tier),
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost_nanousd=cost,
                duration_ms=seconds * 1000,
                ttft_ms=None if route.ttft_seconds is None else route.ttft_seconds * 1000,
                deployment=route.deployment,
                provider=self._provider_kind(route.deployment),
                fallback=tier != "primary",
                local=self._local.get(route.model, False),
                estimated=estimated,
                request_id=request_id,
                session_id=session_id,
                original_model=selector,
                attempts=len(route.log),
            )
        ]
        # One successful call: the request row already says everything about it (deployment,
        # status, duration, tokens), so the common case writes one row, not two.
        implied = len(route.log) == 1 and route.log[0].ok
        rows += self._attempts(route.log, ids, tokens_in, tokens_out, cost, estimated, implied)
        if route.deployment is not None and route.malformed:
            self._metrics.anomaly(route.deployment, "malformed_chunk", route.malformed)
        if route.deployment is not None and route.usage_rejected:
            self._metrics.anomaly(route.deployment, "usage_rejected")
        self._metrics.request(route.model, tier, seconds, route.ttft_seconds)
        self._metrics.usage(route.model, tokens_in, tokens_out, usd(cost))
        if self._load is not None:
            self._load.end(route.model)
        if self._limiter is not None:
            self._limiter.spend(caller_var.get(), tokens_in + tokens_out)
        if self._ledger is not None:
            self._ledger.append(rows)

    def failed(
        self,
        log: list[Attempt],
        *,
        status: int,
        error: str,
        request_id: str,
        session_id: str | None,
        selector: str,
        seconds: float,
    ) -> None:
        """A request that ended in an error after reaching the chain walk."""
        ids = RequestIds(request_id, session_id, selector)
        rows = [
            UsageRecord(
                kind="request",
                model=selector,
                status=status,
                outcome="failed",
                error=error,
                duration_ms=seconds * 1000,
                fallback=bool(log),
                attempts=len(log),
                request_id=request_id,
                session_id=session_id,
                original_model=selector,
            )
        ]
        rows += self._attempts(log, ids, 0, 0, 0, False)
        self._metrics.request(selector, "failed", seconds, None)
        if self._load is not None:
            self._load.end(None)
        if self._ledger is not None:
            self._ledger.append(rows)

    def _attempts(
        self,
        log: list[Attempt],
        ids: RequestIds,
        tokens_in: int,
        tokens_out: int,
        cost: int,
        estimated: bool,
        implied: bool = False,
    ) -> list[UsageRecord]:
        """Count every attempt in the metrics; answer their rows (none when `implied`)."""
        rows: list[UsageRecord] = []
        for attempt in log:
            outcome = "ok" if attempt.ok else "cancelled" if attempt.cancelled else "error"
            self._metrics.attempt(attempt.deployment, attempt.model, outcome, attempt.counted)
            if implied:
                continue
            rows.append(
                UsageRecord(
                    kind="attempt",
                    model=attempt.model,
                    status=attempt.status,
                    outcome=outcome,
                    error=attempt.error,
                    tokens_in=tokens_in if attempt.ok else 0,
                    tokens_out=tokens_out if attempt.ok else 0,
                    cost_nanousd=cost if attempt.ok else 0,
                    duration_ms=attempt.seconds * 1000,
                    deployment=attempt.deployment,
                    provider=self._provider_kind(attempt.deployment),
                    local=self._local.get(attempt.model, False),
                    estimated=estimated and attempt.ok,
                    request_id=ids.request_id,
                    session_id=ids.session_id,
                    original_model=ids.selector,
                )
            )
        return rows
