"""What a chain walk produces: the attempts it made, the walk's own progress, and the answer
(a whole one, or a stream whose first content arrived), with how it was obtained."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.errors import GatewayError, UpstreamError, UpstreamExhausted, UpstreamTimeout
from services.providers.base import ChunkStream, Json
from services.routing.attempt import reason
from services.routing.router import Candidate

FALLBACK_HEADER = {"primary": "false", "fallback": "true", "cache": "cache", "degraded": "degraded"}


@dataclass(slots=True)
class Attempt:
    """One upstream call, for the ledger and the metrics."""

    deployment: str
    model: str
    ok: bool
    seconds: float
    status: int = 0  # the upstream's HTTP status when it answered one
    error: str | None = None  # the UpstreamError class, when it failed
    counted: bool = False  # whether the breaker counted it as a failure
    cancelled: bool = False  # a hedge that lost the race (or the attempt it overtook)

    @property
    def outcome(self) -> str:
        """ok, cancelled or error (the ledger's and the metrics' label)."""
        return "ok" if self.ok else "cancelled" if self.cancelled else "error"


@dataclass(slots=True, kw_only=True)
class Route:
    """How an answer was obtained: the model, the deployment (none for a tier), the upstream
    attempts made, and the route: primary, fallback, cache or degraded."""

    model: str
    deployment: str | None
    attempts: int
    route: str
    log: list[Attempt] = field(default_factory=list)
    ttft_seconds: float | None = None
    # Chunks skipped as unusable; a usage block dropped as untrustworthy (tokens estimated).
    malformed: int = 0
    usage_rejected: bool = False

    @property
    def fallback(self) -> str:
        """The `X-Router-Fallback` value: false, true, cache or degraded."""
        return FALLBACK_HEADER[self.route]


@dataclass(slots=True, kw_only=True)
class Routed(Route):
    """A non-streamed answer."""

    body: Json


@dataclass(slots=True)
class Opened:
    """A deployment's stream once it produced its first content: the chunks so far (held back
    until then) and the rest, each guarded by the stall deadline."""

    candidate: Candidate
    head: list[Json]
    stream: ChunkStream
    rest: AsyncIterator[Json]
    ttft: float
    prefill: bool = False  # opened as a continuation by assistant prefill


@dataclass(slots=True, kw_only=True)
class RoutedStream(Route):
    """An accepted stream: chunks already received (held back until content) and the rest."""

    head: list[Json]
    stream: ChunkStream
    rest: AsyncIterator[Json]
    selector: str = ""
    request: Json = field(default_factory=dict)
    # Deployments that broke this stream: a continuation goes elsewhere.
    broken: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Failed:
    """A walk that found no answer: the error the client gets, and the attempts made."""

    error: GatewayError
    log: tuple[Attempt, ...]


@dataclass(slots=True)
class Walk:
    """One request's progress through its plan."""

    deadline: float
    attempts: int = 0
    retries: int = 0
    failures: list[UpstreamError] = field(default_factory=list)
    log: list[Attempt] = field(default_factory=list)
    deadline_hit: bool = False
    budget_exhausted: bool = False
    # Deployments passed over without a call, and why: disabled, unhealthy, circuit breaker open.
    skipped: dict[str, str] = field(default_factory=dict)


def exhausted(selector: str, walk: Walk) -> UpstreamExhausted:
    """The error for a walk that found no answer and no tier: 503, or 504 on the deadline."""
    summary = "; ".join(f"{f.deployment}: {reason(f)}" for f in walk.failures)
    if walk.deadline_hit:
        error = UpstreamExhausted(
            f"'{selector}' did not answer within the request deadline ({summary})",
            status=504,
            code="deadline_exceeded",
        )
    elif walk.budget_exhausted:
        error = UpstreamExhausted(
            f"every usable upstream of '{selector}' failed and the retry budget is spent "
            f"({summary})",
            status=503,
            code="retry_budget_exhausted",
        )
    elif not walk.failures:
        why = "; ".join(f"{name}: {reason}" for name, reason in walk.skipped.items())
        error = UpstreamExhausted(
            f"no deployment of '{selector}' is available ({why or 'none has a replica up'})",
            status=503,
            code="no_deployment_available",
        )
    else:
        timeouts = all(isinstance(f, UpstreamTimeout) for f in walk.failures)
        error = UpstreamExhausted(
            f"every upstream of '{selector}' failed ({summary})",
            status=504 if timeouts else 503,
        )
    error.headers["Retry-After"] = "1"
    error.headers["X-Router-Attempts"] = str(walk.attempts)
    return error
