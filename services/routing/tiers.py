"""Answers that do not come from a model: the `degraded` message, and completions replayed as
streams (a cache hit or the degraded message for a client that asked for `stream: true`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from services.providers.shapes import completion_chunks

__all__ = ["ReplayedStream", "completion_chunks", "degraded_completion"]

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


class ReplayedStream:
    """A `ChunkStream` with nothing left to read: the replayed chunks are all in the head."""

    malformed = 0
    usage_rejected = False

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._empty()

    async def _empty(self) -> AsyncIterator[Json]:
        return
        yield  # an async generator that yields nothing

    async def aclose(self) -> None:
        """Nothing to release."""
