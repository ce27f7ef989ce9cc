"""The console's routes.

    GET /ui, /ui/                 the page (public: it holds no data; it asks for the admin key
                                  when the gateway has keys, and keeps it in the tab's session)
    GET /ui/<file>                its script, style sheet and the vendored uPlot (a fixed list)
    GET /api/admin/console        the page's data (admin key), services/console/overview.py

The files are read once, at the first request, and served from memory with a strict Content
Security Policy: scripts, styles and requests to this origin only, no framing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.console.overview import ConsoleParts, overview
from services.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    # uPlot sizes its elements through the style property (CSSOM), which style-src allows.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Parts = Annotated[ConsoleParts, Depends(gateway_parts)]
routes = APIRouter()


@functools.cache
def asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@functools.cache
def page(auth_required: bool) -> bytes:
    """The page, telling its script whether to ask for the admin key first."""
    mark = b'<meta name="fr-auth" content="%s">' % (b"required" if auth_required else b"open")
    return asset("index.html").replace(b"</title>", b"</title>\n  " + mark, 1)


@routes.get("/ui", include_in_schema=False)
@routes.get("/ui/", include_in_schema=False)
async def console_page(request: Request) -> Response:
    required = bool(getattr(request.app.state, "auth_required", False))
    return Response(page(required), media_type="text/html; charset=utf-8",
                    headers=SECURITY_HEADERS)  # fmt: skip


@routes.get("/ui/{name:path}", include_in_schema=False)
async def console_file(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:
        raise NotFound(f"no console file '{name}'", code="not_found")
    return Response(asset(name), media_type=media_type, headers=SECURITY_HEADERS)


@routes.get("/api/admin/console")
async def console_data(parts: Parts) -> Response:
    """Everything the console page shows but costs and trends (those are `/api/llm/*`)."""
    return json_response(await overview(parts))
