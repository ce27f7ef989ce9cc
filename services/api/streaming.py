"""Relaying an upstream stream to the client as SSE, continuing it when it breaks.

Once the first content token has gone out, failing over is no longer invisible: the client has
part of an answer. When the stream then breaks (cut, stalled, an oversized or error line), the
relay asks the executor to continue it on the next usable deployment
(services/routing/continuation.py) and streams only the remainder, so the client still gets
one coherent answer ending in ``[DONE]``. Tool-call streams are never continued (a half-built
call cannot be stitched), and when nothing can continue, the stream ends with an SSE error
event that names the original interruption, and no ``[DONE]``, so that no client takes it for
a complete answer.

`usage` is stripped from every relayed chunk (some servers put it on the last content chunk);
a client that asked for it (`stream_options.include_usage`) gets one usage chunk at the end,
summed over the streams that made the answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from loguru import logger

from services.errors import UpstreamError, envelope
from services.routing.continuation import OverlapFilter
from services.routing.executor import ChainExecutor
from services.routing.outcomes import RoutedStream
from services.routing.turn import estimate_tokens, prompt_chars

Json = dict[str, Any]


# Called once when the answer ends: (usage to bill, characters sent, outcome or None for ok).
Finish = Callable[[Json | None, int, "str | None"], None]


class Relay:
    """The client's view of one answer, across the streams that produced it."""

    def __init__(self, routed: RoutedStream, extra: Json) -> None:
        self.routed = routed
        self.extra = extra
        self.id: str | None = None
        self.sent_text = ""
        self.chars = 0
        self.tool_calls = False
        self.single_choice = True
        self.usage: Json | None = None
        self.usage_complete = True  # False once a stream ended without usage
        self._stream_usage: Json | None = None
        self.filter: OverlapFilter | None = None
        self.continued = False

    def encode(self, chunk: Json) -> bytes | None:
        """The SSE event for `chunk`, or None when nothing in it is for the client."""
        usage = chunk.pop("usage", None)
        if usage:
            self._stream_usage = usage
        choices = chunk.get("choices")
        if not choices:
            return None
        for choice in choices:
            if choice.get("index", 0) != 0:
                self.single_choice = False
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}  # attached: the filter may write into it
            if self.continued:
                delta.pop("role", None)
            content = delta.get("content")
            if self.filter is not None and choice.get("index", 0) == 0:
                released = self.filter.feed(content or "")
                if choice.get("finish_reason"):
                    released += self.filter.flush()
                if content is not None or released:
                    delta["content"] = released
                content = released
                if not content and not choice.get("finish_reason") and len(delta) <= 1:
                    return None
            if content:
                self.chars += len(content)
                if choice.get("index", 0) == 0:
                    self.sent_text += content
            if delta.get("tool_calls"):
                self.tool_calls = True
        if self.id is None:
            self.id = chunk.get("id")
        elif self.continued:
            chunk["id"] = self.id  # one answer, one id, whichever deployment wrote this part
        chunk["model"] = self.routed.model
        chunk.update(self.extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def stream_ended(self, complete: bool) -> None:
        """Fold the finished (or broken) stream's usage into the answer's."""
        usage, self._stream_usage = self._stream_usage, None
        if usage is None or not complete:
            self.usage_complete = False
            return
        if self.usage is None:
            self.usage = dict(usage)
            return
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            self.usage[key] = int(self.usage.get(key) or 0) + int(usage.get(key) or 0)

    def usage_event(self, request: Json) -> bytes:
        """The final usage chunk, for a client that asked for one: the upstreams' own counts,
        or an estimate when a broken stream took its count with it."""
        usage = self.billable_usage()
        if usage is None:
            prompt = estimate_tokens(prompt_chars(request))
            completion = estimate_tokens(self.chars)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        chunk: Json = {
            "id": self.id or "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.routed.model,
            "choices": [],
            "usage": usage,
        }
        chunk.update(self.extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def billable_usage(self) -> Json | None:
        """The upstreams' usage when every stream reported it, else None (then estimated)."""
        return self.usage if self.usage_complete else None

    def can_continue(self, enabled: bool, continuations: int, limit: int) -> bool:
        """Whether a broken stream may be continued elsewhere."""
        return enabled and continuations < limit and not self.tool_calls and self.single_choice


async def sse_body(
    routed: RoutedStream,
    extra: Json,
    wants_usage: bool,
    executor: ChainExecutor,
    finish: Finish,
    *,
    resume: bool = True,
    max_continuations: int = 2,
) -> AsyncIterator[bytes]:
    """Re-emit upstream chunks as SSE, continuing a broken stream where it can.

    The ledger record is written before the last event, so a client that saw the end of its
    stream has its record, whatever happens to the process next."""
    relay = Relay(routed, extra)
    recorded = False
    stream = routed.stream
    streams = [stream]  # every stream that wrote part of the answer
    head, rest = routed.head, routed.rest
    continuations = 0
    interruption: UpstreamError | None = None

    def record(outcome: str | None) -> None:
        nonlocal recorded
        if not recorded:
            recorded = True
            routed.malformed += sum(s.malformed for s in streams)
            routed.usage_rejected |= any(s.usage_rejected for s in streams)
            finish(relay.billable_usage(), relay.chars, outcome)

    try:
        while True:
            try:
                for chunk in head:
                    if (event := relay.encode(chunk)) is not None:
                        yield event
                async for chunk in rest:
                    if (event := relay.encode(chunk)) is not None:
                        yield event
                relay.stream_ended(complete=True)
                break
            except UpstreamError as exc:
                relay.stream_ended(complete=False)
                interruption = interruption or exc
                logger.warning("stream from {} broke after the first token: {}",
                               routed.deployment, exc)  # fmt: skip
                await executor.stream_broke(routed, exc)
                await stream.aclose()
                opened = None
                if relay.can_continue(resume, continuations, max_continuations):
                    opened = await executor.resume(routed, relay.sent_text)
                if opened is None:
                    record("interrupted")
                    error = envelope(
                        f"the upstream stream failed: {type(interruption).__name__}",
                        "upstream_error",
                        "stream_interrupted",
                    )
                    yield b"data: " + error + b"\n\n"
                    return
                continuations += 1
                relay.continued = True
                relay.filter = None if opened.prefill else OverlapFilter(relay.sent_text)
                routed.deployment = opened.candidate.provider.name
                if opened.candidate.model != routed.model:
                    routed.route = "fallback"
                stream, head, rest = opened.stream, opened.head, opened.rest
                streams.append(stream)
        if wants_usage:
            yield relay.usage_event(routed.request)
        record("continued" if continuations else None)
        yield b"data: [DONE]\n\n"
    finally:
        record("cancelled")  # the client went away mid-stream
        await stream.aclose()
