"""The JSON response every handler answers with: serialised by orjson."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi.responses import Response
from starlette.requests import Request

from services.errors import GatewayError, render

JSON = "application/json"
# A route's handler: the request in, the response out (the chat POSTs are called as these).
Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response serialised by orjson."""
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=JSON)


def error_response(error: GatewayError) -> Response:
    """A GatewayError in the OpenAI envelope, with its status and headers (Retry-After...)."""
    return Response(render(error), status_code=error.status, headers=error.headers, media_type=JSON)
