"""The spans of a chat turn and of its upstream attempts, with the OpenTelemetry GenAI semantic
conventions (`gen_ai.*`) and the routing decisions as `fallback_routing.*` attributes.

Only called when tracing is on (services/platform/tracing.py); every function here imports the
OpenTelemetry API lazily, so a gateway without tracing never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from services.config import Deployment
from services.platform.tracing import Tracing
from services.routing.turn import TurnRecord

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from services.routing.router import Candidate

Json = dict[str, Any]


def request_attributes(selector: str, request: Json, request_id: str) -> dict[str, Any]:
    """What is known of a chat request when it starts."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": selector,
        "fallback_routing.selector": selector,
        "fallback_routing.request_id": request_id,
    }
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    if isinstance(limit, int):
        attributes["gen_ai.request.max_tokens"] = limit
    for key in ("temperature", "top_p"):
        value = request.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[f"gen_ai.request.{key}"] = float(value)
    return attributes


def start_request(
    tracing: Tracing, selector: str, request: Json, request_id: str, headers: Mapping[str, str]
) -> Context:
    """Open the request's span (a child of the caller's trace, if any) and return the context
    in which its attempts run; the span ends with the turn (`RequestSpans`)."""
    from opentelemetry.trace import SpanKind, set_span_in_context

    attributes = request_attributes(selector, request, request_id)
    span = tracing.tracer.start_span(f"chat {selector}", context=tracing.parent_of(headers),
                                     kind=SpanKind.SERVER, attributes=attributes)  # fmt: skip
    tracing.open_requests[request_id] = span
    return set_span_in_context(span)


def enter(context: Context) -> object:
    """Make `context` current (the attempts of the walk become its children)."""
    from opentelemetry import context as otel_context

    return otel_context.attach(context)


def leave(token: object) -> None:
    from opentelemetry import context as otel_context

    otel_context.detach(token)  # type: ignore[arg-type]


def abandon(tracing: Tracing, request_id: str, failure: BaseException) -> None:
    """End a request span whose turn never started (refused before its walk: a budget, a full
    ledger) or escaped: no record will end it."""
    span = tracing.open_requests.pop(request_id, None)
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", getattr(failure, "code", None) or type(failure).__name__)
    span.set_status(Status(StatusCode.ERROR, type(failure).__name__))
    span.end()


class RequestSpans:
    """A turn observer: ends each request span with what the turn's record says."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    def turn_started(self) -> None:
        """Spans start in the chat handler, which knows the caller's headers."""

    def turn_finished(self, turn: TurnRecord) -> None:
        span = self._tracing.open_requests.pop(turn.request_id, None)
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes({
            "gen_ai.response.model": turn.model,
            "gen_ai.usage.input_tokens": turn.tokens_in,
            "gen_ai.usage.output_tokens": turn.tokens_out,
            "http.response.status_code": turn.status,
            "fallback_routing.route": turn.route or "none",
            "fallback_routing.fallback": turn.route not in (None, "primary"),
            "fallback_routing.attempts": len(turn.attempts),
            "fallback_routing.outcome": turn.outcome,
            "fallback_routing.tokens_estimated": turn.estimated,
            "fallback_routing.cost_usd": turn.cost_nanousd / 1e9,
        })  # fmt: skip
        if turn.deployment:
            span.set_attribute("fallback_routing.deployment", turn.deployment)
        if turn.error:
            span.set_attribute("error.type", turn.error)
            span.set_status(Status(StatusCode.ERROR, turn.error))
        span.end()


def start_attempt(
    tracing: Tracing,
    candidate: Candidate,
    deployment: Deployment | None,
    number: int,
    retry: int,
    breaker: str,
    probe: bool,
) -> Span:
    """One upstream attempt's span, a child of the current request span."""
    from opentelemetry.trace import SpanKind

    upstream = candidate.provider.upstream_model
    kind = deployment.provider if deployment is not None else "unknown"
    host = urlsplit(deployment.base_url).hostname if deployment is not None else None
    return tracing.tracer.start_span(
        f"chat {upstream}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": kind,
            "gen_ai.system": kind,  # the older name of the same attribute
            "gen_ai.request.model": upstream,
            "server.address": host or "",
            "fallback_routing.model": candidate.model,
            "fallback_routing.deployment": candidate.provider.name,
            "fallback_routing.attempt": number,
            "fallback_routing.retry": retry,
            "fallback_routing.breaker_state": breaker,
            "fallback_routing.probe": probe,
        },
    )


def end_attempt(span: Span, winner: str | None, failure: BaseException | None) -> None:
    """Close an attempt's span: who answered (a hedge may win), or why it failed."""
    from opentelemetry.trace import Status, StatusCode

    if winner is not None:
        span.set_attribute("fallback_routing.answered_by", winner)
    if failure is not None:
        span.set_attribute("error.type", type(failure).__name__)
        span.set_status(Status(StatusCode.ERROR, str(failure)[:200]))
    span.end()
