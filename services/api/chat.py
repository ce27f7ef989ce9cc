"""The request path (SPEC §5): sessions and chat turns.

    POST /initiate_call          create or re-pin a session
    POST /chat_completions       a session's chat turn, routed by its pinned selector
    POST /v1/chat/completions    OpenAI-compatible; `X-Session-ID` pins like a session

Handlers read the raw body and validate it with the schemas themselves: the raw dict is what gets
forwarded upstream (unknown OpenAI parameters included), and orjson parsing plus one pydantic
validation is the cheapest correct path. They are plain Starlette routes (`chat_routes`): FastAPI's
per-route wrapper (dependency solving, exit stacks, response validation) cost ~20% of throughput
in bench/run.py and these handlers use none of it; services/api/openapi.py documents them.

Each handler receives the parts it reads (`ChatParts`) through a callable, because the gateway
is opened by the app's lifespan, after the routes exist.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar, overload

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from loguru import logger
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.routing import Route

from services.api import input_limits
from services.api.budgets import Budgets
from services.api.rate_limit import RateLimiter
from services.api.responses import JSON, Handler, json_response
from services.api.schemas import (
    CHAT_COMPLETION,
    INITIATE_CALL,
    SESSION_CHAT,
    ChatCompletionRequest,
    InitiateCallRequest,
    SessionChatRequest,
)
from services.api.streaming import sse_body
from services.capacity.replicas import ReplicaRouting
from services.config import Settings
from services.errors import InvalidRequest, NotFound, RateLimited, SchemaError
from services.ledger.usage import Metering, TurnStart
from services.platform.metrics import Metrics
from services.platform.request_context import caller_var, new_request_id, request_id_var
from services.platform.tracing import Tracing
from services.routing import spans
from services.routing.executor import ChainExecutor
from services.routing.outcomes import Failed, Routed, RoutedStream
from services.routing.router import Router
from services.routing.sessions import SessionStore
from services.routing.turn import TurnRecord, Turns, answer_chars

T = TypeVar("T")
Json = dict[str, Any]
SESSION_ONLY_KEYS = frozenset({"session_id", "message", "model"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChatParts(Protocol):
    """What the chat handlers read of the gateway (services/gateway.py provides it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def router(self) -> Router: ...
    @property
    def sessions(self) -> SessionStore: ...
    @property
    def executor(self) -> ChainExecutor: ...
    @property
    def limiter(self) -> RateLimiter: ...
    @property
    def budgets(self) -> Budgets: ...
    @property
    def metering(self) -> Metering: ...
    @property
    def turns(self) -> Turns: ...
    @property
    def replicas(self) -> ReplicaRouting: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def tracing(self) -> Tracing | None: ...


Parts = Callable[[], ChatParts]


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    """The parsed body; 400 for an empty (unless allowed) or malformed one."""
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidRequest("the request body is empty; send a JSON object", code="empty_body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "the request body is not valid JSON (UTF-8, nesting at most 1024 levels)",
            code="invalid_json",
        ) from exc


def validate(adapter: TypeAdapter[T], data: Any) -> T:
    """Validate against a schema; 422 naming each bad field (never echoing the bad value)."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:5]
        ]
        raise SchemaError("; ".join(problems)) from exc


def router_headers(model: str, attempts: int, fallback: str) -> dict[str, str]:
    """The headers that say how a routed answer was obtained."""
    return {
        "X-Router-Model": model,
        "X-Router-Attempts": str(attempts),
        "X-Router-Fallback": fallback,
    }


def session_not_found(session_id: str) -> NotFound:
    """The 404 for a session that does not exist, expired, or belongs to another API key (which
    must not learn that it exists)."""
    return NotFound(
        f"session '{session_id}' does not exist or has expired; call /initiate_call",
        code="session_not_found",
    )


def known_selector(chat: ChatParts, name: str) -> str:
    """`name` if it is a configured model or chain, else 404."""
    if not chat.router.knows(name):
        raise NotFound(f"The model or chain '{name}' does not exist", code="model_not_found")
    return name


def usable_selector(chat: ChatParts, pinned: str) -> str:
    """A session's pinned selector, or the default when the configuration dropped it."""
    if chat.router.knows(pinned):
        return pinned
    default = chat.settings.sessions.default_selector
    logger.warning(
        "session pinned to '{}', which is no longer configured; using '{}'", pinned, default
    )
    return default


def check_messages(chat: ChatParts, messages: list[Any]) -> None:
    """400 for a conversation over the configured size limits."""
    api = chat.settings.api
    input_limits.check_messages(
        messages, max_messages=api.max_messages, max_content_chars=api.max_content_chars
    )


async def within_rate_limit(chat: ChatParts) -> None:
    """429 with Retry-After when the caller's key is over its per-minute limits."""
    if retry_after := await chat.limiter.admit(caller_var.get()):
        raise RateLimited(retry_after)


async def initiate_call(request: Request, parts: Parts) -> Response:
    """Create or re-pin a session to a model or chain (default: the current routing target)."""
    chat = parts()
    await within_rate_limit(chat)
    body = validate(INITIATE_CALL, await read_json(request, allow_empty=True))
    selector = (
        known_selector(chat, body.model) if body.model else chat.replicas.new_session_selector()
    )
    session_id = body.session_id or new_request_id() + new_request_id()
    if not await chat.sessions.pin(session_id, selector, caller_var.get()):
        raise session_not_found(session_id)
    chat.metrics.sessions.inc()
    return json_response(
        {"session_id": session_id, "model": selector, "expires_in": chat.sessions.ttl_seconds}
    )


async def chat_completions(request: Request, parts: Parts) -> Response:
    """A session's chat turn, routed by its pinned selector (or a one-off `model` override)."""
    chat = parts()
    await within_rate_limit(chat)
    raw = await read_json(request)
    body = validate(SESSION_CHAT, raw)
    pinned = await chat.sessions.selector(body.session_id, caller_var.get())
    if pinned is None:
        raise session_not_found(body.session_id)
    selector = known_selector(chat, body.model) if body.model else usable_selector(chat, pinned)
    payload = {k: v for k, v in raw.items() if k not in SESSION_ONLY_KEYS}
    if body.message is not None:
        payload["messages"] = [{"role": "user", "content": body.message}]
    check_messages(chat, payload["messages"])
    extra = {"session_id": body.session_id}
    return await route_turn(chat, selector, payload, extra, body.session_id, body.stream, False,
                            request.headers)  # fmt: skip


async def openai_chat_completions(request: Request, parts: Parts) -> Response:
    """OpenAI-compatible chat completions; `X-Session-ID` pins like a session."""
    chat = parts()
    await within_rate_limit(chat)
    raw = await read_json(request)
    body = validate(CHAT_COMPLETION, raw)
    check_messages(chat, raw["messages"])
    selector = (
        known_selector(chat, body.model) if body.model else chat.replicas.new_session_selector()
    )
    session_id = request.headers.get("x-session-id")
    if session_id is not None:
        validate(SESSION_CHAT, {"session_id": session_id, "message": ""})
        caller = caller_var.get()
        # During a Redis outage an unseen session takes the requested model (not the default),
        # pinned here and written back without overwriting a pin Redis may already hold.
        pinned = await chat.sessions.selector(session_id, caller, unknown=None)
        if pinned is not None:
            selector = usable_selector(chat, pinned)
        elif not await chat.sessions.pin(session_id, selector, caller, replace=False):
            raise session_not_found(session_id)
    return await route_turn(chat, selector, raw, {}, session_id, body.stream, True,
                            request.headers)  # fmt: skip


async def route_turn(
    chat: ChatParts,
    selector: str,
    payload: Json,
    extra: Json,
    session_id: str | None,
    stream: bool,
    echo_session: bool,
    headers: Mapping[str, str],
) -> Response:
    """Walk the chain, hand the turn's record to the observers, answer JSON or SSE (`headers`:
    the request's, where a caller's `traceparent` is read when tracing is on)."""
    start = TurnStart(
        payload, request_id_var.get(), session_id, selector, caller_var.get(), time.perf_counter()
    )
    executor = chat.executor
    tracing = chat.tracing
    if tracing is None:  # the default: no span, no context switch
        routed = await walk_turn(chat, start, stream)
    else:
        token = spans.enter(
            spans.start_request(tracing, selector, payload, start.request_id, headers)
        )
        try:
            routed = await walk_turn(chat, start, stream)
        except BaseException as exc:
            spans.abandon(tracing, start.request_id, exc)
            raise
        finally:
            spans.leave(token)
    if isinstance(routed, Failed):
        raise routed.error
    headers = router_headers(routed.model, routed.attempts, routed.fallback)
    if echo_session and session_id is not None:
        headers["X-Session-ID"] = session_id
    if isinstance(routed, RoutedStream):
        streamed = routed

        def finish(usage: Json | None, chars_out: int, outcome: str | None) -> None:
            record = chat.metering.answered(
                start, streamed, usage=usage, chars_out=chars_out, outcome=outcome
            )
            chat.turns.finished(record)

        resilience = chat.settings.resilience
        return StreamingResponse(
            sse_body(
                routed,
                extra,
                bool((payload.get("stream_options") or {}).get("include_usage")),
                executor,
                finish,
                resume=resilience.stream_resume,
                max_continuations=resilience.max_continuations,
            ),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )
    body = routed.body
    finish_answer(chat, start, routed)
    body["model"] = routed.model
    body.update(extra)
    return Response(orjson.dumps(body), headers=headers, media_type=JSON)


@overload
async def walk_turn(
    chat: ChatParts, start: TurnStart, stream: Literal[False]
) -> Routed | Failed: ...
@overload
async def walk_turn(
    chat: ChatParts, start: TurnStart, stream: bool
) -> Routed | RoutedStream | Failed: ...
async def walk_turn(
    chat: ChatParts, start: TurnStart, stream: bool
) -> Routed | RoutedStream | Failed:
    """Admit the turn, reserve its budget, walk its chain. A walk that failed or was interrupted
    ends its turn here; an answer's turn ends with `finish_answer` or at the end of its stream."""
    executor = chat.executor
    chat.turns.admit()
    if chat.budgets.enabled:  # off by default: no coroutine on the request path then
        await chat.budgets.reserve(start.request_id, start.caller, start.selector, start.request)
    chat.turns.started()  # ended by `turns.finished`
    try:
        routed = await (
            executor.open_stream(start.selector, start.request)
            if stream
            else executor.complete(start.selector, start.request)
        )
    except BaseException as exc:  # the client went away mid-walk, or a bug: the turn still ends
        ended, why = (
            (499, "client_closed")
            if isinstance(exc, asyncio.CancelledError)
            else (500, "internal_error")
        )
        chat.turns.finished(chat.metering.failed(start, (), status=ended, error=why))
        raise
    if isinstance(routed, Failed):
        error = routed.error
        chat.turns.finished(
            chat.metering.failed(
                start, routed.log, status=error.status, error=error.code or error.type
            )
        )
    return routed


def finish_answer(chat: ChatParts, start: TurnStart, routed: Routed) -> TurnRecord:
    """End an answered (non-streamed) turn: its record goes to the observers."""
    body = routed.body
    record = chat.metering.answered(
        start, routed, usage=body.get("usage"), chars_out=answer_chars(body)
    )
    chat.turns.finished(record)
    return record


# (handler, path, documented body); first in the app's route list: Starlette matches routes in
# order, and the request path should not pay for testing every admin and docs route first.
CHAT_ENDPOINTS: list[tuple[Any, str, type[BaseModel]]] = [
    (initiate_call, "/initiate_call", InitiateCallRequest),
    (chat_completions, "/chat_completions", SessionChatRequest),
    (openai_chat_completions, "/v1/chat/completions", ChatCompletionRequest),
]


def chat_handlers(parts: Parts) -> dict[str, Handler]:
    """path -> its POST handler, given `parts`: what the middleware dispatches directly."""
    return {path: functools.partial(handler, parts=parts) for handler, path, _ in CHAT_ENDPOINTS}


def chat_routes(parts: Parts) -> list[Route]:
    """The request-path routes, each handler given `parts`."""
    return [
        Route(path, handler, methods=["POST"]) for path, handler in chat_handlers(parts).items()
    ]
