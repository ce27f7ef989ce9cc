"""What tokens cost: per-model pricing, and savings against a reference model.

Money is counted in integer nano-dollars (1e-9 USD) end to end, in the ledger and in the
database, so that sums are exact on SQLite and PostgreSQL alike; prices are USD per million
tokens, i.e. 1 token at p USD/Mtok costs p * 1,000 nano-dollars. Conversion to dollars happens
only when a report is rendered.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from services.config import Pricing

NANO_PER_USD = 1_000_000_000


def cost_nanousd(pricing: Pricing, tokens_in: int, tokens_out: int) -> int:
    """The cost of one call in nano-dollars (rounded half-even to a whole nano-dollar)."""
    if not pricing.input_per_mtok and not pricing.output_per_mtok:
        return 0  # local models: no Decimal arithmetic on the request path
    exact = (
        Decimal(str(pricing.input_per_mtok)) * tokens_in
        + Decimal(str(pricing.output_per_mtok)) * tokens_out
    ) * 1000
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def usd(nanousd: int) -> float:
    """Nano-dollars as dollars, rounded to a millionth of a cent for display."""
    return round(nanousd / NANO_PER_USD, 8)


def savings(actual_nanousd: int, reference_nanousd: int) -> tuple[int, float]:
    """(reference - actual, that as a percentage of the reference; 0 when the reference is 0)."""
    saved = reference_nanousd - actual_nanousd
    percent = round(100 * saved / reference_nanousd, 2) if reference_nanousd else 0.0
    return saved, percent
