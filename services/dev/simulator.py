"""The simulated model server: a real HTTP process that stands in for an LLM provider.

Speaks the OpenAI chat-completions protocol (``POST /v1/chat/completions``, JSON and SSE with a
``usage`` chunk) and Anthropic's Messages protocol (``POST /v1/messages``, JSON and SSE events),
so both provider adapters can be exercised for real. Behaviour is set at start (the deployment's
``simulation:`` block) and can be changed while it runs, which is how tests and the demo inject
faults::

    POST /_sim/behaviour {"failure_rate": 1.0, "failure_mode": "status", "failure_status": 500}
    GET  /_sim/stats      -> {"requests": 12, "failures": 3, "ready": true}
    POST /_sim/reset      -> counters to zero, behaviour back to the start-up settings

Failure modes (docs/simulator.md has the table): ``status`` (an error answer), ``hang`` (no
answer for ``hang_seconds``), ``drop`` (close the connection before answering),
``drop_mid_stream`` (close it after ``drop_after_events`` events), ``hang_after_headers`` (send
the headers, then nothing), ``stall_mid_stream`` (go silent after ``drop_after_events`` events),
``truncate`` (end the body cleanly after ``drop_after_events`` events: no finish reason, no
``[DONE]``), ``malformed_chunk`` (one garbage ``data:`` line after ``drop_after_events`` events,
then carry on), ``oversized_line`` (a ``data:`` line of ``oversized_bytes``), ``bogus`` (200 with
``bogus_body`` as the whole answer or as one chunk), ``context_length`` and ``content_filter``
(400 with OpenAI's real error bodies). ``fail_next`` makes only the next N requests fail, which
is how "a single 500" is made.

Besides faults: ``first_token_ms`` (a delay after the headers, before the first token),
``slow_rate``/``slow_ms`` (a heavy tail on that delay), ``usage_override`` (a usage block to send
instead of the real one), ``usage_on_last_chunk`` (`transformers serve`'s habit), ``models_status``
(what ``GET /v1/models`` answers while chat works) and ``prefill`` (``continue``: a trailing
assistant message is continued, the way real prefill works; ``reject``: 400 like a provider
without prefill). A continuation instruction (a user message after the partial answer) is
answered with the rest of the answer, repeating its last two words first, as models tend to.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import orjson
from aiohttp import web

from services.config import Simulation
from services.dev.sim_wire import (
    WORDS,
    anthropic_events,
    anthropic_message,
    continuation_start,
    count_tokens,
    is_prefill,
    openai_completion,
    openai_events,
)

__all__ = ["WORDS", "Behaviour", "SimulatedModelServer", "run_simulator"]

FailureMode = Literal[
    "status", "hang", "drop", "drop_mid_stream", "hang_after_headers", "stall_mid_stream",
    "truncate", "malformed_chunk", "oversized_line", "bogus", "context_length", "content_filter",
    "echo_headers",
]  # fmt: skip
FAILURE_MODES = frozenset(FailureMode.__args__)  # type: ignore[attr-defined]
# Modes that fail a request only once its stream (or answer) has started.
MID_STREAM_MODES = frozenset(
    {"drop_mid_stream", "hang_after_headers", "stall_mid_stream", "truncate", "malformed_chunk",
     "oversized_line", "bogus"}
)  # fmt: skip
CONTEXT_LENGTH_ERROR = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages."
)
CONTENT_FILTER_ERROR = (
    "The response was filtered due to the prompt triggering content management policy. "
    "Please modify your prompt and retry."
)
PREFILL_ERROR = "This model does not support assistant message prefill."


@dataclass
class Behaviour:
    """What the server does now; every field can be changed at run time."""

    latency_ms: float = 0.0
    tokens_per_second: float = 1_000_000.0
    response_tokens: int = 24
    failure_rate: float = 0.0
    failure_mode: FailureMode = "status"
    failure_status: int = 500
    retry_after: float | None = None
    hang_seconds: float = 300.0
    # Mid-stream faults strike after this many SSE events (1 = after the role chunk).
    drop_after_events: int = 2
    # >0: only the next N chat requests fail (then the server is healthy again).
    fail_next: int = 0
    first_token_ms: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 0.0
    oversized_bytes: int = 2_000_000
    bogus_body: Any = None
    usage_override: Any = None
    usage_on_last_chunk: bool = False
    models_status: int | None = None
    prefill: Literal["continue", "reject"] = "continue"
    # Set a cookie on every answer, as a provider's load balancer does (the gateway must not
    # send it back: /_sim/stats counts requests that carried one).
    set_cookie: bool = False

    @classmethod
    def from_simulation(cls, sim: Simulation) -> Behaviour:
        """Start-up behaviour from a deployment's ``simulation:`` block."""
        return cls(
            latency_ms=sim.latency_ms,
            tokens_per_second=sim.tokens_per_second,
            response_tokens=sim.response_tokens,
            failure_rate=sim.failure_rate,
            failure_status=sim.failure_status,
        )

    def updated(self, changes: Any) -> Behaviour:
        """A copy with `changes` applied; unknown keys or bad values raise ValueError."""
        if not isinstance(changes, dict):
            raise TypeError("behaviour changes must be a JSON object")
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown behaviour keys: {sorted(unknown)}")
        new = replace(self, **changes)
        if not 0 <= new.failure_rate <= 1 or not 0 <= new.slow_rate <= 1:
            raise ValueError("failure_rate and slow_rate must be within [0, 1]")
        if new.failure_mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure_mode {new.failure_mode!r}")
        if new.prefill not in {"continue", "reject"}:
            raise ValueError(f"unknown prefill {new.prefill!r}")
        if new.tokens_per_second <= 0 or new.response_tokens < 1:
            raise ValueError("tokens_per_second must be > 0 and response_tokens >= 1")
        return new


class SimulatedModelServer:
    """The aiohttp application and its mutable state."""

    def __init__(
        self,
        name: str,
        simulation: Simulation,
        *,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.name = name
        self._initial = Behaviour.from_simulation(simulation)
        self.behaviour = self._initial
        self._rng = rng or random.Random()
        self._clock = clock
        self._ready_at = clock() + simulation.cold_start_seconds
        self.requests = 0
        self.failures = 0
        self.with_cookie = 0
        self._ids = 0

    def app(self) -> web.Application:
        """The routes, ready for ``web.run_app``."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/messages", self.messages),
                web.get("/_sim/stats", self.stats),
                web.post("/_sim/behaviour", self.set_behaviour),
                web.get("/_sim/behaviour", self.get_behaviour),
                web.post("/_sim/reset", self.reset),
            ]
        )
        return app

    # -- control -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the cold start has elapsed."""
        return bool(self._clock() >= self._ready_at)

    async def health(self, _: web.Request) -> web.Response:
        """200 once warm, 503 while the cold start lasts (what a planner waits for)."""
        if self.ready:
            return web.json_response({"status": "ok", "model": self.name})
        remaining = round(self._ready_at - self._clock(), 3)
        return web.json_response({"status": "starting", "ready_in": remaining}, status=503)

    async def models(self, request: web.Request) -> web.Response:
        """An OpenAI model list with the one model served. `models_status` makes it fail while
        chat works (as `transformers serve` without a hub cache does); connection-level faults
        apply here too (a broken server fails its health probes), without counting as chat."""
        behaviour = self.behaviour
        if behaviour.models_status is not None:
            return self._error(behaviour.models_status, "api_error", "no model list", True)
        broken = behaviour.failure_mode in {"status", "hang", "drop"}
        if broken and behaviour.failure_rate > 0 and self._rng.random() < behaviour.failure_rate:
            return await self._fail(request, behaviour, openai_format=True)
        item = {"id": self.name, "object": "model", "created": 0, "owned_by": "simulated"}
        return web.json_response({"object": "list", "data": [item]})

    async def stats(self, _: web.Request) -> web.Response:
        """Counters tests use to see how many attempts reached this upstream."""
        body = {"requests": self.requests, "failures": self.failures, "ready": self.ready,
                "requests_with_cookie": self.with_cookie}  # fmt: skip
        return web.json_response(body)

    async def get_behaviour(self, _: web.Request) -> web.Response:
        """The current behaviour."""
        return web.json_response(asdict(self.behaviour))

    async def set_behaviour(self, request: web.Request) -> web.Response:
        """Change behaviour at run time (fault injection)."""
        try:
            self.behaviour = self.behaviour.updated(orjson.loads(await request.read()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        return web.json_response(asdict(self.behaviour))

    def restore(self) -> None:
        """Behaviour back to the start-up settings (counters kept)."""
        self.behaviour = self._initial

    async def reset(self, _: web.Request) -> web.Response:
        """Counters to zero and behaviour back to the start-up settings."""
        self.restore()
        self.requests = self.failures = self.with_cookie = 0
        return web.json_response(asdict(self.behaviour))

    # -- protocol ------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI chat completions, JSON or SSE."""
        return await self._serve(request, openai_format=True)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages, JSON or SSE."""
        return await self._serve(request, openai_format=False)

    def _take_failure(self) -> bool:
        """Whether this request fails: one of the next `fail_next`, or by `failure_rate`."""
        behaviour = self.behaviour
        if behaviour.fail_next > 0:
            self.behaviour = replace(behaviour, fail_next=behaviour.fail_next - 1)
            return True
        return behaviour.failure_rate > 0 and self._rng.random() < behaviour.failure_rate

    async def _refusal(
        self,
        request: web.Request,
        messages: list[Any],
        behaviour: Behaviour,
        mode: str | None,
        openai_format: bool,
    ) -> web.StreamResponse | None:
        """The answer when this request is not served normally: still loading, a failure mode
        that ends it before any token, or a prefill this model rejects."""
        if not self.ready:
            self.failures += 1
            return self._error(
                503, "overloaded_error", "model is still loading", openai_format, 1.0
            )
        if mode is not None:
            self.failures += 1
        if mode in {"status", "hang", "drop"}:
            return await self._fail(request, behaviour, openai_format)
        if mode == "echo_headers":  # a careless upstream: our own credentials in its 400
            headers = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
            return self._error(400, "invalid_request_error", f"bad request headers: {headers}",
                               openai_format)  # fmt: skip
        if mode == "context_length":
            return self._error(400, "invalid_request_error", CONTEXT_LENGTH_ERROR, openai_format,
                               code="context_length_exceeded")  # fmt: skip
        if mode == "content_filter":
            return self._error(400, "invalid_request_error", CONTENT_FILTER_ERROR, openai_format,
                               code="content_filter")  # fmt: skip
        if continuation_start(messages) and is_prefill(messages) and behaviour.prefill == "reject":
            return self._error(400, "invalid_request_error", PREFILL_ERROR, openai_format)
        return None

    async def _serve(self, request: web.Request, *, openai_format: bool) -> web.StreamResponse:
        self.requests += 1
        if "Cookie" in request.headers:
            self.with_cookie += 1
        try:
            body = orjson.loads(await request.read())
            messages = body["messages"]
            valid = isinstance(messages, list) and bool(messages)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            return self._error(
                400, "invalid_request_error", "body must be JSON with messages", openai_format
            )
        behaviour = self.behaviour
        mode = behaviour.failure_mode if self.ready and self._take_failure() else None
        refusal = await self._refusal(request, messages, behaviour, mode, openai_format)
        if refusal is not None:
            return refusal
        start = continuation_start(messages)

        limit = (
            body.get("max_completion_tokens") or body.get("max_tokens") or behaviour.response_tokens
        )
        n_tokens = max(1, min(behaviour.response_tokens, int(limit)))
        # Like a real provider, answer as the model that was asked for (or our own name).
        model = str(body.get("model") or self.name)[:128]
        words = [f"[{model}]"] + [WORDS[i % len(WORDS)] for i in range(n_tokens - 1)]
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)][start:]
        pieces = pieces or [" ."]
        prompt_tokens = count_tokens(messages)
        await asyncio.sleep(behaviour.latency_ms / 1000)
        self._ids += 1
        ident = f"sim-{self._ids}"
        first_token = behaviour.first_token_ms / 1000
        if behaviour.slow_rate > 0 and self._rng.random() < behaviour.slow_rate:
            first_token += behaviour.slow_ms / 1000
        if mode == "bogus":  # 200 with a JSON answer that is not a chat completion
            return web.Response(
                body=orjson.dumps(behaviour.bogus_body), content_type="application/json"
            )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        if behaviour.usage_override is not None:
            usage = behaviour.usage_override
        if not body.get("stream"):
            await asyncio.sleep(first_token + len(pieces) / behaviour.tokens_per_second)
            text = "".join(pieces)
            payload = (
                openai_completion(ident, model, text, usage)
                if openai_format
                else anthropic_message(ident, model, text, usage)
            )
            answer = web.Response(body=orjson.dumps(payload), content_type="application/json")
            if behaviour.set_cookie:
                answer.set_cookie("lb_affinity", ident)
            return answer
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = (
            openai_events(ident, model, pieces, usage, include_usage, behaviour.usage_on_last_chunk)
            if openai_format
            else anthropic_events(ident, model, pieces, usage)
        )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if behaviour.set_cookie:
            resp.set_cookie("lb_affinity", ident)
        await resp.prepare(request)
        # The client may go away mid-stream: normal for a streaming server.
        with contextlib.suppress(ConnectionResetError):
            await self._stream(request, resp, events, behaviour, mode, first_token)
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        events: list[bytes],
        behaviour: Behaviour,
        mode: str | None,
        first_token: float,
    ) -> None:
        """Write the events, with the mid-stream fault (if any) after `drop_after_events`."""
        delay = 1 / behaviour.tokens_per_second
        strike = behaviour.drop_after_events
        for sent, event in enumerate(events):
            if sent == strike and mode is not None:
                if mode == "drop_mid_stream":
                    if request.transport is not None:
                        request.transport.abort()
                    return
                if mode in {"hang_after_headers", "stall_mid_stream"}:
                    await asyncio.sleep(behaviour.hang_seconds)
                    return
                if mode == "truncate":
                    await resp.write_eof()
                    return
                if mode == "malformed_chunk":
                    bad = (
                        b"{not json"
                        if behaviour.bogus_body is None
                        else orjson.dumps(behaviour.bogus_body)
                    )
                    await resp.write(b"data: " + bad + b"\n\n")
                elif mode == "oversized_line":
                    await resp.write(b"data: " + b"x" * behaviour.oversized_bytes + b"\n\n")
            if sent == 1 and first_token:
                await asyncio.sleep(first_token)
            await resp.write(event)
            await asyncio.sleep(delay)
        await resp.write_eof()

    def _error(
        self,
        status: int,
        kind: str,
        message: str,
        openai_format: bool,
        retry_after: float | None = None,
        *,
        code: str | None = None,
    ) -> web.Response:
        body = (
            {"error": {"message": message, "type": kind, "param": None, "code": code}}
            if openai_format
            else {"type": "error", "error": {"type": kind, "message": message}}
        )
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return web.Response(
            body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )

    async def _fail(
        self, request: web.Request, behaviour: Behaviour, openai_format: bool
    ) -> web.Response:
        if behaviour.failure_mode == "hang":
            await asyncio.sleep(behaviour.hang_seconds)
        elif behaviour.failure_mode == "drop" and request.transport is not None:
            request.transport.abort()
        kind = "rate_limit_error" if behaviour.failure_status == 429 else "api_error"
        return self._error(
            behaviour.failure_status,
            kind,
            "simulated failure",
            openai_format,
            behaviour.retry_after,
        )


def run_simulator(name: str, simulation: Simulation, *, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (aiohttp's run_app handles both)."""
    server = SimulatedModelServer(name, simulation)
    web.run_app(
        server.app(),
        host=host,
        port=port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=1.0,  # requests hanging on purpose must not hold up a stop
    )
