"""Upstream 400s that another model can take: where a too-long request, or one a content policy
refused, may go next (a pure decision; the executor re-plans with it)."""

from __future__ import annotations

from services.config import Settings
from services.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamRejected,
)


def rejection_targets(
    settings: Settings,
    model: str,
    failure: UpstreamContextLength | UpstreamContentPolicy,
    later: list[str],
) -> tuple[list[str], UpstreamRejected]:
    """The models to try next (in order) and the error for the client if none can answer.

    Context too long: the model's `context_window_fallback`, else the `later` chain models with
    a larger configured `context_window`. Content policy: the model's `content_policy_fallback`
    only (by default nothing: the refusal is the answer)."""
    own = settings.models.get(model)
    if isinstance(failure, UpstreamContextLength):
        targets = list(own.context_window_fallback) if own is not None else []
        if not targets:
            window = (own.context_window if own is not None else None) or 0
            targets = [
                m
                for m in later
                if m in settings.models and (settings.models[m].context_window or 0) > window
            ]
        error: UpstreamRejected = ContextLengthExceeded(
            f"the request is longer than the context of {model}"
            + (" and of every model it could go to" if targets else "")
            + f": {failure.reason}"
        )
        return targets, error
    targets = list(own.content_policy_fallback) if own is not None else []
    return targets, ContentFiltered(f"{model} refused the content: {failure.reason}")
