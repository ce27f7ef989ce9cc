"""The end of a chat turn: one typed record of what was asked, what answered and what it cost,
handed to every observer (the ledger, the metrics, the planner's load counter, the rate limiter).

The chat handler tells the observers when a turn starts (`Turns.started`) and hands them its
record when it ends (`Turns.finished`), once, whether it was answered, served from a tier,
interrupted or failed. An observer that raises is logged and skipped: bookkeeping never turns an
answered request into an error. A new observer implements `TurnObserver` and is added to the
list in `services/gateway.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from services.routing.outcomes import Attempt

Json = dict[str, Any]


# Not frozen: a frozen dataclass of this size costs ~2.5 µs more to build, on every request.
@dataclass(slots=True, kw_only=True)
class TurnRecord:
    """One finished chat turn.

    `model` is the model that answered (for a failed turn, the selector asked for); `route` is
    primary, fallback, cache or degraded, or None when nothing answered. Tokens come from the
    upstream's usage or are `estimated`; cache and degraded answers cost nothing."""

    request_id: str
    session_id: str | None
    selector: str
    caller: str
    status: int
    outcome: str  # ok, cache, degraded, continued, interrupted, cancelled, failed
    model: str
    route: str | None
    deployment: str | None = None
    attempts: tuple[Attempt, ...] = ()
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    estimated: bool = False
    cost_nanousd: int = 0
    seconds: float = 0.0
    ttft_seconds: float | None = None
    # Chunks skipped as unusable; a usage block dropped as untrustworthy (tokens estimated).
    malformed: int = 0
    usage_rejected: bool = False

    @property
    def answered(self) -> bool:
        """Whether anything (a deployment or a tier) answered."""
        return self.route is not None

    @property
    def billed(self) -> bool:
        """Whether a deployment answered (tiers are free)."""
        return self.route in ("primary", "fallback")


class TurnObserver(Protocol):
    """Something that keeps account of chat turns."""

    def turn_started(self) -> None:
        """A turn began walking its chain."""

    def turn_finished(self, turn: TurnRecord) -> None:
        """A turn ended; called exactly once per `turn_started`."""


class Turns:
    """The observers of every chat turn, called in order, and the checks a turn must pass
    before it starts (`admit`: the ledger refuses turns it could not record)."""

    def __init__(
        self, observers: Sequence[TurnObserver], admissions: Sequence[Callable[[], None]] = ()
    ) -> None:
        self.observers = tuple(observers)
        self.admissions = tuple(admissions)

    def admit(self) -> None:
        """Raise the GatewayError of the first check that refuses a new turn."""
        for check in self.admissions:
            check()

    def started(self) -> None:
        for observer in self.observers:
            observer.turn_started()

    def finished(self, turn: TurnRecord) -> None:
        for observer in self.observers:
            try:
                observer.turn_finished(turn)
            except Exception:  # noqa: BLE001 - one observer's bug must not fail the answer
                logger.exception("turn observer {} failed", type(observer).__name__)


def estimate_tokens(text_chars: int) -> int:
    """A conservative token count for text of this many characters (one per four, rounded up)."""
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


def answer_chars(body: Json) -> int:
    """Characters of text in a completion's choices."""
    return sum(
        len(str((c.get("message") or {}).get("content") or "")) for c in body.get("choices") or ()
    )


def tokens_of(
    usage: Mapping[str, Any] | None, request: Json, chars_out: int
) -> tuple[int, int, bool]:
    """(tokens in, tokens out, estimated) from an upstream usage block, else estimated."""
    if usage and "prompt_tokens" in usage:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), False
    return estimate_tokens(prompt_chars(request)), estimate_tokens(chars_out), True
