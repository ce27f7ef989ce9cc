"""The end of a turn: tokens (upstream usage, else a marked estimate), costs, the turn record,
its ledger rows, and the observers that receive it."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from services.config import Pricing, Settings
from services.ledger.costs import cost_nanousd, savings, usd
from services.ledger.usage import LedgerObserver, Metering, TurnStart
from services.ledger.wal import Ledger
from services.routing.outcomes import Attempt, Route
from services.routing.turn import TurnRecord, Turns, answer_chars, prompt_chars, tokens_of

REQUEST = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}  # fmt: skip


def test_upstream_usage_wins_and_is_not_estimated() -> None:
    """prompt_tokens/completion_tokens are taken as they are."""
    assert tokens_of({"prompt_tokens": 12, "completion_tokens": 30}, REQUEST, 999) == (
        12,
        30,
        False,
    )


def test_missing_usage_is_estimated_conservatively_and_marked() -> None:
    """No usage: one token per four characters, rounded up, flagged as estimated."""
    assert prompt_chars(REQUEST) == len("be brief") + len("hello there")  # 19
    assert tokens_of(None, REQUEST, 9) == (5, 3, True)
    assert tokens_of({}, REQUEST, 0) == (5, 0, True)


def test_answer_chars_counts_every_choice() -> None:
    body = {"choices": [{"message": {"content": "abc"}}, {"message": {"content": None}}]}
    assert answer_chars(body) == 3


def test_costs_are_exact_in_nano_dollars() -> None:
    """0.15 / 0.60 per million: 1 input token is 150 nano-dollars, 1 output token 600."""
    pricing = Pricing(input_per_mtok=0.15, output_per_mtok=0.60)
    assert cost_nanousd(pricing, 1, 1) == 750
    assert cost_nanousd(pricing, 3_333_333, 2_277_777) == 1_866_666_150
    assert cost_nanousd(Pricing(), 10**9, 10**9) == 0
    assert usd(1_866_666_150) == 1.86666615
    assert savings(25, 100) == (75, 75.0)
    assert savings(0, 0) == (0, 0.0)


def metering_settings() -> Settings:
    """Two priced models and a chain from one to the other."""
    return Settings.model_validate(
        {
            "models": {
                "big": {"deployments": [{"provider": "openai", "base_url": "http://127.0.0.1:1",
                                         "model": "big"}],
                        "pricing": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}},
                "small": {"deployments": [{"provider": "openai", "base_url": "http://127.0.0.1:1",
                                           "model": "small"}], "local": True},
            },
            "chains": {"seed": ["big", "small", "degraded"]},
            "sessions": {"default_selector": "seed"},
        }
    )  # fmt: skip


START = TurnStart(REQUEST, "req-1", "sess-1", "seed", "team-a", time.perf_counter())


def test_metering_prices_an_answer_and_leaves_tiers_free() -> None:
    """A deployment's answer carries its usage and exact cost; a tier's costs nothing."""
    meter = Metering(metering_settings())
    failover = [Attempt("big:0", "big", False, 0.2, 503, "UpstreamHTTPError", True),
                Attempt("small:0", "small", True, 0.1, 200)]  # fmt: skip
    route = Route(model="big", deployment="big:0", attempts=1, route="primary",
                  log=[Attempt("big:0", "big", True, 0.1, 200)], ttft_seconds=0.05)  # fmt: skip
    answered = meter.answered(START, route, usage={"prompt_tokens": 1000,
                              "completion_tokens": 500}, chars_out=0)  # fmt: skip
    assert (answered.tokens_in, answered.tokens_out, answered.estimated) == (1000, 500, False)
    assert answered.cost_nanousd == 1000 * 2000 + 500 * 8000, "2 and 8 USD per million tokens"
    assert (answered.caller, answered.outcome, answered.billed) == ("team-a", "ok", True)
    tier = Route(model="degraded", deployment=None, attempts=2, route="degraded", log=failover)
    free = meter.answered(START, tier, usage=None, chars_out=40)
    assert (free.tokens_in, free.cost_nanousd, free.outcome, free.billed) == (
        0,
        0,
        "degraded",
        False,
    )
    failed = meter.failed(START, tuple(failover), status=503, error="no_deployment_available")
    assert (failed.model, failed.route, failed.answered, failed.outcome) == (
        "seed", None, False, "failed")  # fmt: skip


async def test_ledger_observer_writes_one_row_per_simple_turn_and_each_attempt_otherwise(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A single successful call is one request row; a failover adds a row per attempt; a failed
    turn is a `failed` request row with its attempts."""
    settings = metering_settings()
    ledger = Ledger(engine, tmp_path / "wal")
    ledger.start()
    observer = LedgerObserver(settings, ledger, {n: (m, d) for m, n, d in settings.deployments()})
    meter = Metering(settings)
    one = Route(model="big", deployment="big:0", attempts=1, route="primary",
                log=[Attempt("big:0", "big", True, 0.1, 200)])  # fmt: skip
    observer.turn_finished(meter.answered(START, one, usage=None, chars_out=8))
    assert [(r.kind, r.deployment, r.provider, r.estimated) for r in ledger.buffer] == [
        ("request", "big:0", "openai", True)]  # fmt: skip
    failover = Route(model="small", deployment="small:0", attempts=2, route="fallback", log=[
        Attempt("big:0", "big", False, 0.2, 503, "UpstreamHTTPError", True),
        Attempt("small:0", "small", True, 0.1, 200)])  # fmt: skip
    observer.turn_finished(meter.answered(START, failover, usage=None, chars_out=8))
    rows = ledger.buffer[1:]
    assert [(r.kind, r.outcome, r.fallback, r.local) for r in rows] == [
        ("request", "ok", True, True), ("attempt", "error", False, False),
        ("attempt", "ok", False, True)]  # fmt: skip
    observer.turn_finished(meter.failed(START, tuple(failover.log[:1]), status=503, error="x"))
    failed = ledger.buffer[4:]
    assert [(r.kind, r.outcome, r.model, r.fallback) for r in failed] == [
        ("request", "failed", "seed", True), ("attempt", "error", "big", False)]  # fmt: skip
    assert {r.request_id for r in ledger.buffer} == {"req-1"}
    await ledger.close()


class Counting:
    """An observer that keeps what it was told."""

    def __init__(self) -> None:
        self.started = 0
        self.finished: list[TurnRecord] = []

    def turn_started(self) -> None:
        self.started += 1

    def turn_finished(self, turn: TurnRecord) -> None:
        self.finished.append(turn)


class Broken(Counting):
    """An observer with a bug."""

    def turn_finished(self, turn: TurnRecord) -> None:
        raise RuntimeError("observer bug")


def test_an_observer_that_raises_does_not_stop_the_others() -> None:
    """Bookkeeping never turns an answered request into an error: the next observer still runs."""
    before, broken, after = Counting(), Broken(), Counting()
    turns = Turns([before, broken, after])
    turns.started()
    record = Metering(metering_settings()).failed(START, (), status=503, error="x")
    turns.finished(record)
    assert (before.started, broken.started, after.started) == (1, 1, 1)
    assert before.finished == [record] and after.finished == [record]
