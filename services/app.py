"""The HTTP interface (SPEC §5), built by `create_app` from settings and an environment.

Handlers read the raw body and validate it with the schemas themselves: the raw dict is what gets
forwarded upstream (unknown OpenAI parameters included), and orjson parsing plus one pydantic
validation is the cheapest correct path. The OpenAPI document still describes every body.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from loguru import logger
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from services import __version__
from services.api import drain, input_limits
from services.api.admin import resilience_routes
from services.api.auth import KeyRing
from services.api.ledger_views import llm_routes
from services.api.middleware import RequestContextMiddleware
from services.api.ops import ops_routes
from services.api.responses import JSON, json_response
from services.api.schemas import (
    CHAT_COMPLETION,
    INITIATE_CALL,
    SESSION_CHAT,
    ChatCompletionRequest,
    InitiateCallRequest,
    SessionChatRequest,
)
from services.api.streaming import Turn, sse_body
from services.config import Settings, load_settings
from services.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    SchemaError,
    envelope,
    render,
)
from services.gateway import GatewayRef, open_gateway
from services.ledger.usage import answer_chars
from services.platform.logs import (
    AccessLog,
    configure_logging,
    intercept_stdlib_logging,
    secret_values,
)
from services.platform.metrics import Metrics
from services.platform.request_context import caller_var, new_request_id, request_id_var
from services.providers.base import Json
from services.resilience.breaker_store import BreakerStore
from services.routing.outcomes import Routed, RoutedStream
from services.routing.router import Router
from services.routing.sessions import SessionStore

T = TypeVar("T")
SESSION_ONLY_KEYS = frozenset({"session_id", "message", "model"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ERROR_ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERROR_RESPONSES = {
    "400": "Malformed JSON or an invalid request",
    "404": "Unknown session, model or chain",
    "413": "Body larger than api.max_body_bytes",
    "422": "Body does not match the schema",
    "502": "Every upstream of the chain failed",
    "503": "No upstream available, or the session store is unreachable",
    "504": "Every upstream timed out",
}
# Any endpoint can answer these (the middleware's checks, the envelope for unknown parameters).
COMMON_ERROR_RESPONSES = {
    "400": "Invalid request",
    "401": "Missing or unknown API key (when keys are configured)",
    "403": "A client key on an admin endpoint",
    "404": "Unknown resource",
    "413": "Body larger than api.max_body_bytes",
    "422": "Parameters or body do not match the schema",
    "429": "Rate limit reached for this key (Retry-After says when to retry)",
    "431": "Request headers larger than api.max_header_bytes",
    "503": "A dependency (the ledger database) is unavailable",
}
PLAIN_TEXT_ENDPOINTS = {"/metrics": "Prometheus text exposition format"}


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


def document_lean_routes(app: FastAPI, routes: list[tuple[str, str, type[BaseModel]]]) -> None:
    """Add the plain-Starlette POST routes, with their bodies, to the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        _, defs = models_json_schema(
            [(body, "validation") for _, _, body in routes],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        components["ErrorEnvelope"] = ERROR_ENVELOPE_SCHEMA
        error = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
        for doc, path, body in routes:
            schema["paths"][path] = {
                "post": {
                    "summary": doc.split("\n")[0],
                    "operationId": path.strip("/").replace("/", "_"),
                    "requestBody": {
                        "required": body is not InitiateCallRequest,
                        "content": {
                            JSON: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
                        },
                    },
                    "responses": {
                        "200": {"description": "OK (text/event-stream when stream is true)"},
                        **{
                            code: {"description": text, **error}
                            for code, text in ERROR_RESPONSES.items()
                        },
                    },
                }
            }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, text in COMMON_ERROR_RESPONSES.items():
                    # Replaces FastAPI's default 422 (its own shape): every error is the envelope.
                    if code == "422" or code not in responses:
                        responses[code] = {"description": text, **error}
                if path in PLAIN_TEXT_ENDPOINTS:
                    responses["200"] = {
                        "description": PLAIN_TEXT_ENDPOINTS[path],
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def tune_gc() -> None:
    """Freeze start-up objects out of the collector's reach and collect young objects less often.

    Measured with bench/run.py (one worker, 2 cores): with the default thresholds, collections kept
    walking the whole FastAPI/pydantic object graph; freezing it and raising the gen-0 threshold
    took concurrency-50 throughput from ~2,400 to ~3,000 requests/s and p99 from 66 ms to 19 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def create_app(
    settings: Settings,
    *,
    environ: Mapping[str, str],
    access_log: AccessLog | None = None,
) -> FastAPI:
    """Build the FastAPI application; the gateway is opened, fully, in its lifespan."""
    ref = GatewayRef()
    exporter = Metrics()  # Prometheus: the gateway counts into it, /metrics renders it

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gw = await open_gateway(settings, environ, metrics=exporter)
        ref.set(gw)
        tune_gc()
        drain.install(settings.api.drain_delay_seconds, gw.start_draining)
        try:
            yield
        finally:
            await gw.close()
            ref.set(None)

    app = FastAPI(title="Fallback Routing", version=__version__, lifespan=lifespan)
    app.state.gateway = ref
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.api.max_body_bytes,
        max_header_bytes=settings.api.max_header_bytes,
        keys=KeyRing.from_env(environ),
        access_log=access_log,
    )
    _install_error_handlers(app)
    max_messages = settings.api.max_messages
    resilience = settings.resilience
    default_selector = settings.sessions.default_selector

    def router() -> Router:
        return ref().router

    def sessions() -> SessionStore:
        return ref().sessions

    def breakers() -> BreakerStore:
        return ref().breakers

    max_content_chars = settings.api.max_content_chars

    def check_messages(messages: list[Any]) -> None:
        input_limits.check_messages(
            messages, max_messages=max_messages, max_content_chars=max_content_chars
        )

    def known_selector(name: str) -> str:
        if not router().knows(name):
            raise NotFound(f"The model or chain '{name}' does not exist", code="model_not_found")
        return name

    async def initiate_call(request: Request) -> Response:
        """Create or re-pin a session to a model or chain (default: the current routing target)."""
        body = validate(INITIATE_CALL, await read_json(request, allow_empty=True))
        selector = known_selector(body.model) if body.model else ref().new_session_selector()
        session_id = body.session_id or new_request_id() + new_request_id()
        await sessions().pin(session_id, selector)
        exporter.sessions.inc()
        return json_response(
            {"session_id": session_id, "model": selector, "expires_in": sessions().ttl_seconds}
        )

    async def within_rate_limit() -> None:
        if retry_after := await ref().limiter.admit(caller_var.get()):
            raise RateLimited(retry_after)

    async def chat_completions(request: Request) -> Response:
        """A session's chat turn, routed by its pinned selector (or a one-off `model` override)."""
        await within_rate_limit()
        raw = await read_json(request)
        body = validate(SESSION_CHAT, raw)
        pinned = await sessions().selector(body.session_id)
        if pinned is None:
            raise NotFound(
                f"session '{body.session_id}' does not exist or has expired; call /initiate_call",
                code="session_not_found",
            )
        selector = known_selector(body.model) if body.model else _usable(pinned)
        payload = {k: v for k, v in raw.items() if k not in SESSION_ONLY_KEYS}
        if body.message is not None:
            payload["messages"] = [{"role": "user", "content": body.message}]
        check_messages(payload["messages"])
        extra = {"session_id": body.session_id}
        return await route_turn(selector, payload, extra, body.session_id, body.stream, False)

    async def openai_chat_completions(request: Request) -> Response:
        """OpenAI-compatible chat completions; `X-Session-ID` pins like a session."""
        await within_rate_limit()
        raw = await read_json(request)
        body = validate(CHAT_COMPLETION, raw)
        check_messages(raw["messages"])
        selector = known_selector(body.model)
        extra: dict[str, str] = {}
        session_id = request.headers.get("x-session-id")
        if session_id is not None:
            validate(SESSION_CHAT, {"session_id": session_id, "message": ""})
            pinned = await sessions().selector(session_id)
            if pinned is None:
                await sessions().pin(session_id, selector)
            else:
                selector = _usable(pinned)
        return await route_turn(selector, raw, extra, session_id, body.stream, True)

    def _usable(pinned: str) -> str:
        if router().knows(pinned):
            return pinned
        logger.warning(
            "session pinned to '{}', which is no longer configured; using '{}'",
            pinned,
            default_selector,
        )
        return default_selector

    async def route_turn(
        selector: str,
        payload: Json,
        extra: Json,
        session_id: str | None,
        stream: bool,
        echo_session: bool,
    ) -> Response:
        """Walk the chain, record the request in the ledger, answer JSON or SSE."""
        started = time.perf_counter()
        turn = Turn(payload, request_id_var.get(), session_id, selector, started)
        gw = ref()
        executor, recorder = gw.executor, gw.recorder
        gw.load.begin()  # the recorder's answered/failed ends it
        try:
            routed: Routed | RoutedStream = await (
                executor.open_stream(selector, payload)
                if stream
                else executor.complete(selector, payload)
            )
        except GatewayError as exc:
            recorder.failed(
                exc.attempt_log,
                status=exc.status,
                error=exc.code or exc.type,
                request_id=turn.request_id,
                session_id=session_id,
                selector=selector,
                seconds=time.perf_counter() - started,
            )
            raise
        headers = router_headers(routed.model, routed.attempts, routed.fallback)
        if echo_session and session_id is not None:
            headers["X-Session-ID"] = session_id
        if isinstance(routed, RoutedStream):
            wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                sse_body(
                    routed,
                    extra,
                    wants_usage,
                    executor,
                    recorder,
                    turn,
                    resume=resilience.stream_resume,
                    max_continuations=resilience.max_continuations,
                ),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        body = routed.body
        recorder.answered(
            routed,
            request=payload,
            request_id=turn.request_id,
            session_id=session_id,
            selector=selector,
            usage=body.get("usage"),
            chars_out=answer_chars(body),
            seconds=time.perf_counter() - started,
        )
        body["model"] = routed.model
        body.update(extra)
        return Response(orjson.dumps(body), headers=headers, media_type=JSON)

    app.include_router(ops_routes(settings, ref, exporter))
    app.include_router(resilience_routes(settings, ref))
    app.include_router(llm_routes(settings, ref))

    # The request path is served by plain Starlette routes: FastAPI's per-route wrapper (dependency
    # solving, exit stacks, response validation) cost ~20% of throughput in bench/run.py, and these
    # handlers use none of it. `document_lean_routes` puts them in the OpenAPI document by hand.
    lean_routes: list[tuple[Any, str, type[BaseModel]]] = [
        (initiate_call, "/initiate_call", InitiateCallRequest),
        (chat_completions, "/chat_completions", SessionChatRequest),
        (openai_chat_completions, "/v1/chat/completions", ChatCompletionRequest),
    ]
    # First in the list: Starlette matches routes in order, and the request path should not pay
    # for testing every admin and docs route before its own.
    for index, (endpoint, path, _) in enumerate(lean_routes):
        app.router.routes.insert(index, Route(path, endpoint, methods=["POST"]))
    document_lean_routes(app, [(e.__doc__ or "", path, body) for e, path, body in lean_routes])
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error a client sees goes through here, in the OpenAI envelope."""

    async def gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return Response(render(exc), status_code=exc.status, headers=exc.headers, media_type=JSON)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found" if exc.status_code == 404 else "http_error"
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return Response(
            envelope(message, "invalid_request_error", kind),
            status_code=exc.status_code,
            headers=exc.headers,
            media_type=JSON,
        )

    async def request_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return Response(
            envelope("; ".join(problems), "invalid_request_error", "invalid_schema"),
            status_code=422,
            media_type=JSON,
        )

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)


def app_from_env() -> FastAPI:
    """Entry point for uvicorn workers: settings from FR_CONFIG and FR_* in the environment."""
    environ = dict(os.environ)
    settings = load_settings(environ=environ)
    key_envs = [d.api_key_env for m in settings.models.values() for d in m.deployments]
    key_envs += [s.scaler.api_key_env for s in (settings.capacity.large, settings.capacity.small)]
    secrets = [*secret_values(key_envs, environ), *KeyRing.from_env(environ).secrets]
    sink = configure_logging("api_server", settings.log, secrets=secrets)
    # Worker processes (--workers > 1) are spawned fresh: route uvicorn's own logging here too.
    intercept_stdlib_logging(settings.log.level)
    access_log = (
        AccessLog(sink, json_lines=settings.log.json_lines) if settings.log.requests else None
    )
    return create_app(settings, environ=environ, access_log=access_log)
