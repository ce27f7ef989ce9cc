"""Answers that do not come from a model: the `degraded` message, and completions replayed as
streams (a cache hit or the degraded message for a client that asked for `stream: true`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

Json = dict[str, Any]
DEGRADED_MODEL = "degraded"


def degraded_completion(message: str) -> Json:
    """An OpenAI chat.completion carrying the configured degraded message."""
    return {
        "id": f"chatcmpl-degraded-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": DEGRADED_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def completion_chunks(completion: Json) -> list[Json]:
    """The chunks a streaming client would have received for `completion` (usage last)."""
    base = {
        "id": completion.get("id", "chatcmpl-replayed"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model", ""),
    }
    chunks: list[Json] = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(message["tool_calls"])
            ]
        chunks.append(
            {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        )
        finish = choice.get("finish_reason") or "stop"
        chunks.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
    if completion.get("usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


class ReplayedStream:
    """A `ChunkStream` with nothing left to read: the replayed chunks are all in the head."""

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._empty()

    async def _empty(self) -> AsyncIterator[Json]:
        return
        yield  # an async generator that yields nothing

    async def aclose(self) -> None:
        """Nothing to release."""
