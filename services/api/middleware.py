"""Pure-ASGI middleware: request id, API keys, header and body size limits, access line,
last-resort error envelope, and the chat routes' dispatch.

Written as plain ASGI rather than Starlette's BaseHTTPMiddleware, which wraps every request in
extra tasks and streams and costs a large share of the hot path's budget. For the same reason the
chat POSTs (`direct`: path -> handler) are called from here, not through the app: Starlette's
exception middleware, router and per-route wrapper did nothing for them but cost about 4 % of a
turn's instructions (bench/RESULTS.md). Their errors are rendered as the app's handler renders
them; every other request, and any other method on those paths, goes through the app.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from loguru import logger
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.auth import Denied, KeyRing, required_role
from services.api.responses import Handler, error_response
from services.errors import GatewayError, PayloadTooLarge, envelope
from services.platform.logs import AccessLog, printable
from services.platform.request_context import (
    accept_request_id,
    caller_var,
    request_id_var,
    sees_all_var,
)


class RequestContextMiddleware:
    """Tags each request with an id, checks its API key, enforces the size limits and logs one
    line when it ends."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int = 16384,
        keys: KeyRing | None = None,
        access_log: AccessLog | None = None,
        direct: Mapping[str, Handler] | None = None,
    ) -> None:
        self.app = app
        self.direct = dict(direct or {})
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.keys = keys or KeyRing([], None)
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client_id, declared_length, authorization, header_bytes, cross_site = _scan_headers(
            scope["headers"]
        )
        request_id = accept_request_id(client_id)
        token = request_id_var.set(request_id)
        rid_header = (b"x-request-id", request_id.encode())
        state: dict[str, Any] = {"status": 0, "model": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = message.setdefault("headers", [])
                headers.append(rid_header)
                for name, value in headers:
                    if name == b"x-router-model":
                        state["model"] = value.decode()
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            return message

        caller_token = sees_all_token = None
        try:
            role = required_role(scope["method"], scope["path"]) if self.keys.active else "client"
            verdict = self.keys.check(role, authorization)
            if header_bytes > self.max_header_bytes:
                await _send_error(send_with_id, 431, "invalid_request_error", "headers_too_large",
                                  f"request headers are larger than {self.max_header_bytes} "
                                  "bytes")  # fmt: skip
            elif cross_site and not self.keys.enabled:
                await _send_error(send_with_id, 403, "invalid_request_error", "cross_site_request",
                                  "a browser page of another site may not call a gateway that "
                                  "has no API keys configured")  # fmt: skip
            elif isinstance(verdict, Denied):
                challenge = [(b"www-authenticate", b"Bearer")] if verdict.status == 401 else []
                await _send_error(send_with_id, verdict.status, "invalid_request_error",
                                  verdict.code, verdict.message, challenge)  # fmt: skip
            elif declared_length is not None and _too_long(declared_length, limit):
                if not _too_long(declared_length, DISCARD_LIMIT):
                    await _discard_body(receive)
                too_large = PayloadTooLarge(f"request body is larger than {limit} bytes")
                await _send_error(send_with_id, too_large.status, too_large.type, too_large.code,
                                  too_large.message)  # fmt: skip
            else:
                caller_token = caller_var.set(verdict.key_id)
                sees_all_token = sees_all_var.set(verdict.admin)
                handler = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
                if handler is None:
                    await self.app(scope, receive_limited, send_with_id)
                else:
                    await _dispatch(handler, scope, receive_limited, send_with_id)
        except Exception:  # noqa: BLE001 - the last line of defence: no trace reaches a client
            # Anything that escaped the app's handlers: log it with the trace, answer a plain 500.
            logger.exception("unhandled error on {} {}", printable(scope["method"]),
                             printable(scope["path"]))  # fmt: skip
            if not state["status"]:
                await _send_error(send_with_id, 500, "server_error", "internal_error",
                                  "internal error; see the server log")  # fmt: skip
        finally:
            if self.access_log is not None:
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.access_log.request(
                    request_id, scope["method"], scope["path"], state["status"], elapsed_ms,
                    state["model"],
                )  # fmt: skip
            request_id_var.reset(token)
            if caller_token is not None:
                caller_var.reset(caller_token)
            if sees_all_token is not None:
                sees_all_var.reset(sees_all_token)


async def _dispatch(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Call a chat handler and send its answer, or its error in the OpenAI envelope."""
    try:
        response = await handler(Request(scope, receive))
    except GatewayError as exc:
        response = error_response(exc)
    await response(scope, receive, send)


def _scan_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[str | None, bytes | None, str | None, int, bool]:
    """One pass over the headers: the client's request id, Content-Length, Authorization, the
    headers' total size, and whether a browser says the request comes from another site
    (`Sec-Fetch-Site: cross-site`: a page on the web calling a gateway on this machine)."""
    client_id = authorization = None
    declared_length = None
    header_bytes = 0
    cross_site = False
    for name, value in headers:
        header_bytes += len(name) + len(value) + 4
        if name == b"x-request-id":
            client_id = value.decode("latin-1")
        elif name == b"content-length":
            declared_length = value
        elif name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"sec-fetch-site":
            cross_site = value == b"cross-site"
    return client_id, declared_length, authorization, header_bytes, cross_site


# A body refused for its size is still read (and dropped) up to this much before the 413: a
# client that writes its whole body before reading (most do) would otherwise see the connection
# reset instead of the answer. Beyond it the connection is closed after the 413.
DISCARD_LIMIT = 16 * 1024 * 1024


async def _discard_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def _too_long(declared: bytes, limit: int) -> bool:
    try:
        return int(declared) > limit
    except ValueError:
        return False  # a malformed Content-Length is the server's to reject


async def _send_error(
    send: Send,
    status: int,
    type_: str,
    code: str | None,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = envelope(message, type_, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
