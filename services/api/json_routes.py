"""Routes whose JSON body may come labelled as a form, as `curl -d` labels it.

`curl -d '{...}'` without `-H 'Content-Type: application/json'` sends
`application/x-www-form-urlencoded`, and the seeds' own examples do exactly that. FastAPI parses
a body as JSON only when it is labelled JSON or not labelled at all, so such a body would fail
validation as "not an object". These routes drop that label before FastAPI reads the body; none
of them takes a real form. (The chat routes read their JSON whatever the label says.)

The browser attack a form label enables, a page on another site posting to the gateway, is
refused before any route by `services/api/middleware.py` (cross-site requests to a gateway
without keys) and by the keys themselves (a form cannot send an Authorization header).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

FORM = b"application/x-www-form-urlencoded"


class JsonBodyRoute(APIRoute):
    """An APIRoute that reads a form-labelled body as the JSON it is."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_body_handler(request: Request) -> Response:
            headers = request.scope["headers"]
            if any(name == b"content-type" and value.startswith(FORM) for name, value in headers):
                scope = {**request.scope,
                         "headers": [h for h in headers if h[0] != b"content-type"]}  # fmt: skip
                request = Request(scope, request.receive)
            return await handler(request)

        return json_body_handler
