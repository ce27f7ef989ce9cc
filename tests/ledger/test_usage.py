"""Tokens and costs of one answer: upstream usage when given, a marked estimate when not."""

from __future__ import annotations

from services.config import Pricing
from services.ledger.costs import cost_nanousd, savings, usd
from services.ledger.usage import answer_chars, prompt_chars, tokens_of

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
