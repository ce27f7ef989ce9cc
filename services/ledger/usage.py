"""From a finished chat turn to its record (tokens and cost) and its ledger rows.

Tokens come from the upstream's `usage` (streams ask for a final usage chunk; the Anthropic
adapter translates its own). When an answer carries none, tokens are estimated at one per four
characters, rounded up, and the record is marked `estimated`. Costs use the answering model's
pricing; cache and degraded answers cost nothing.

`Metering` makes the `TurnRecord` (services/routing/turn.py) that every observer receives;
`LedgerObserver` is the observer that turns it into `UsageRecord` rows in the WAL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.config import Deployment, Settings
from services.errors import LedgerFull
from services.ledger.costs import cost_nanousd
from services.ledger.records import UsageRecord
from services.ledger.wal import Ledger
from services.routing.outcomes import Attempt, Route
from services.routing.turn import TurnRecord, tokens_of

Json = dict[str, Any]


@dataclass(slots=True)
class TurnStart:
    """What is known of a turn when it starts walking its chain."""

    request: Json
    request_id: str
    session_id: str | None
    selector: str
    caller: str
    started: float  # time.perf_counter()


class Metering:
    """Counts a turn's tokens and prices them, into its `TurnRecord`."""

    def __init__(self, settings: Settings) -> None:
        self._pricing = {name: m.pricing for name, m in settings.models.items()}

    def answered(
        self,
        start: TurnStart,
        route: Route,
        *,
        usage: Mapping[str, Any] | None,
        chars_out: int,
        status: int = 200,
        outcome: str | None = None,
    ) -> TurnRecord:
        """A turn that got an answer (possibly from a tier, possibly cut short mid-stream)."""
        billed = route.route in {"primary", "fallback"}
        tokens_in, tokens_out, estimated = (
            tokens_of(usage, start.request, chars_out) if billed else (0, 0, False)
        )
        pricing = self._pricing.get(route.model)
        cost = cost_nanousd(pricing, tokens_in, tokens_out) if billed and pricing else 0
        return TurnRecord(
            request_id=start.request_id,
            session_id=start.session_id,
            selector=start.selector,
            caller=start.caller,
            status=status,
            outcome=outcome or ("ok" if billed else route.route),
            model=route.model,
            route=route.route,
            deployment=route.deployment,
            attempts=tuple(route.log),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            estimated=estimated,
            cost_nanousd=cost,
            seconds=time.perf_counter() - start.started,
            ttft_seconds=route.ttft_seconds,
            malformed=route.malformed,
            usage_rejected=route.usage_rejected,
        )

    def failed(
        self, start: TurnStart, log: tuple[Attempt, ...], *, status: int, error: str
    ) -> TurnRecord:
        """A turn that ended in an error after reaching the chain walk."""
        return TurnRecord(
            request_id=start.request_id,
            session_id=start.session_id,
            selector=start.selector,
            caller=start.caller,
            status=status,
            outcome="failed",
            error=error,
            model=start.selector,
            route=None,
            attempts=log,
            seconds=time.perf_counter() - start.started,
        )


class LedgerObserver:
    """Writes each turn to the ledger: one request row, plus one row per attempt unless the
    turn was a single successful call (the request row already says everything about it)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        deployments: Mapping[str, tuple[str, Deployment]],
    ) -> None:
        self._ledger = ledger
        self._local = {name: m.local for name, m in settings.models.items()}
        # By name, including replicas the capacity planner adds later (the gateway's live table).
        self._deployments = deployments

    def _provider_kind(self, deployment: str | None) -> str | None:
        found = self._deployments.get(deployment or "")
        return found[1].provider if found is not None else None

    def admit(self) -> None:
        """Refuse a new turn (503 `ledger_full`) when it could not be recorded."""
        if self._ledger.refuses_new_turns():
            raise LedgerFull(
                "the usage ledger cannot record more requests now (its database and its WAL "
                "are both unavailable); retry later"
            )

    def turn_started(self) -> None:
        """Nothing to write until the turn ends."""

    def turn_finished(self, turn: TurnRecord) -> None:
        request = UsageRecord(
            kind="request",
            model=turn.model,
            status=turn.status,
            outcome=turn.outcome,
            error=turn.error,
            tokens_in=turn.tokens_in,
            tokens_out=turn.tokens_out,
            cost_nanousd=turn.cost_nanousd,
            duration_ms=turn.seconds * 1000,
            ttft_ms=None if turn.ttft_seconds is None else turn.ttft_seconds * 1000,
            deployment=turn.deployment,
            provider=self._provider_kind(turn.deployment),
            fallback=turn.route != "primary" and (turn.answered or bool(turn.attempts)),
            local=self._local.get(turn.model, False) if turn.answered else False,
            estimated=turn.estimated,
            request_id=turn.request_id,
            session_id=turn.session_id,
            original_model=turn.selector,
            attempts=len(turn.attempts),
            api_key_id=turn.caller,
        )
        implied = turn.answered and len(turn.attempts) == 1 and turn.attempts[0].ok
        rows = [request] if implied else [request, *self._attempt_rows(turn)]
        self._ledger.append(rows)

    def _attempt_rows(self, turn: TurnRecord) -> list[UsageRecord]:
        return [
            UsageRecord(
                kind="attempt",
                model=attempt.model,
                status=attempt.status,
                outcome=attempt.outcome,
                error=attempt.error,
                tokens_in=turn.tokens_in if attempt.ok else 0,
                tokens_out=turn.tokens_out if attempt.ok else 0,
                cost_nanousd=turn.cost_nanousd if attempt.ok else 0,
                duration_ms=attempt.seconds * 1000,
                deployment=attempt.deployment,
                provider=self._provider_kind(attempt.deployment),
                local=self._local.get(attempt.model, False),
                estimated=turn.estimated and attempt.ok,
                request_id=turn.request_id,
                session_id=turn.session_id,
                original_model=turn.selector,
                api_key_id=turn.caller,
            )
            for attempt in turn.attempts
        ]
