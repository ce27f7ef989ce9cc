"""What the simulated model server writes: OpenAI and Anthropic answers and SSE events, the
deterministic words of its answers, and how it reads a continuation request (pure functions)."""

from __future__ import annotations

import time
from typing import Any

import orjson

WORDS = (
    "the", "gateway", "routed", "this", "reply", "through", "a", "simulated", "model", "so",
    "that", "every", "failure", "path", "can", "be", "tested", "without", "a", "real", "provider",
)  # fmt: skip


def count_tokens(messages: Any) -> int:
    """A rough, deterministic token count (words), good enough for usage accounting tests."""
    total = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += len(str(content or "").split()) + 3
    return max(total, 1)


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def continuation_start(messages: list[Any]) -> int:
    """Where an answer picks up: after the words of a trailing assistant message (prefill), or
    two words before the end of a partial answer followed by a request to continue (a model
    asked to go on tends to repeat itself a little); 0 for a fresh question."""
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "assistant":
        return len(str(last.get("content") or "").split())
    if len(messages) >= 2 and isinstance(messages[-2], dict):
        partial = messages[-2]
        asks = "continue" in str(last.get("content") or "").lower()
        if partial.get("role") == "assistant" and asks:
            return max(0, len(str(partial.get("content") or "").split()) - 2)
    return 0


def is_prefill(messages: list[Any]) -> bool:
    last = messages[-1]
    return isinstance(last, dict) and last.get("role") == "assistant"


def openai_completion(ident: str, model: str, text: str, usage: Any) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }


def openai_events(
    ident: str,
    model: str,
    pieces: list[str],
    usage: Any,
    include_usage: bool,
    usage_on_last_chunk: bool,
) -> list[bytes]:
    created = int(time.time())
    base = {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**base, "choices": [choice], **extra})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces[:-1]]
    if usage_on_last_chunk:  # `transformers serve`: usage rides on the last content chunk
        events.append(chunk({"content": pieces[-1]}, "stop", usage=usage))
    else:
        events.append(chunk({"content": pieces[-1]}))
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append(sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_usage(usage: Any) -> Any:
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
    return usage


def anthropic_message(ident: str, model: str, text: str, usage: Any) -> dict[str, Any]:
    return {
        "id": f"msg_{ident}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def anthropic_events(ident: str, model: str, pieces: list[str], usage: Any) -> list[bytes]:
    translated = anthropic_usage(usage)
    start = anthropic_message(ident, model, "", usage)
    start["content"], start["stop_reason"] = [], None
    if isinstance(translated, dict):
        start["usage"] = {**translated, "output_tokens": 1}
    events = [
        sse({"type": "message_start", "message": start}, "message_start"),
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    events += [
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
            "content_block_delta",
        )
        for p in pieces
    ]
    output = translated.get("output_tokens") if isinstance(translated, dict) else len(pieces)
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events
