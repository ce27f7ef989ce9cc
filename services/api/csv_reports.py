"""Reports as CSV (`?format=csv`, or `Accept: text/csv`) next to their JSON.

Money is written in exact dollars from the ledger's nano-dollars (nine decimals), so the rows of
a report sum to its JSON totals to the last nano-dollar; the JSON rounds to 1e-8 for display.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response

Format = Literal["json", "csv"]
# For the OpenAPI document: these reports answer JSON or CSV.
JSON_OR_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}
}


def wants_csv(request: Request, format: Format | None) -> bool:
    """`?format=` decides; without it, an Accept header that names text/csv does."""
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "")


def exact_usd(nanousd: int) -> str:
    return f"{Decimal(nanousd).scaleb(-9):.9f}"  # fixed point, never "0E-9"


def csv_response(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], filename: str
) -> Response:
    """A CSV attachment: a header line, then one line per row (RFC 4180 quoting)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\r\n")  # fmt: skip
    writer.writeheader()
    writer.writerows(rows)
    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=disposition)
