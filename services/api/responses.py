"""The JSON response every handler answers with: serialised by orjson."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi.responses import Response

JSON = "application/json"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response serialised by orjson."""
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=JSON)
