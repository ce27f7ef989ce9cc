"""One attempt's reading of an upstream stream: holding chunks back until content, the stall
deadline between chunks, and how a failure counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.errors import UpstreamError, UpstreamHTTPError, UpstreamTimeout
from services.providers.base import Json
from services.resilience.breaker import Outcome
from services.resilience.watchdog import Watchdog

# Upstream statuses that say the request itself is wrong: another deployment would say the same.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})
# 4xx answers that still say something about the upstream's health.
BREAKER_COUNTED_4XX = frozenset({408, 429})


def counts_against_breaker(failure: UpstreamError) -> bool:
    """Whether a failure says the upstream is unwell (4xx other than 408/429 say otherwise)."""
    if isinstance(failure, UpstreamHTTPError) and 400 <= failure.status < 500:
        return failure.status in BREAKER_COUNTED_4XX
    return True


def breaker_outcome(failure: UpstreamError) -> Outcome:
    """How the breaker counts a failure: not at all, as a timeout (also a failure), or a failure."""
    if not counts_against_breaker(failure):
        return Outcome.IGNORED
    return Outcome.TIMEOUT if isinstance(failure, UpstreamTimeout) else Outcome.FAILURE


def has_content(chunk: Json) -> bool:
    """Whether a chunk carries something the client sees (text, a tool call, an end)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if (
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("reasoning_content")
            or delta.get("refusal")
            or choice.get("finish_reason")
        ):
            return True
    return False


async def read_until_content(chunks: AsyncIterator[Json], deployment: str) -> list[Json]:
    """Hold back chunks until one carries content: failing over is still invisible until then."""
    head: list[Json] = []
    async for chunk in chunks:
        head.append(chunk)
        if has_content(chunk):
            return head
    if not head:
        raise UpstreamError(deployment, "stream ended before any chunk")
    return head


async def watched(
    chunks: AsyncIterator[Json], deployment: str, stall: float, watch: Watchdog
) -> AsyncIterator[Json]:
    """The chunks, failing with UpstreamTimeout when one takes longer than `stall` to come (or
    the watchdog's hard deadline passes)."""
    watch.bind()  # the consumer of the rest: the executor's task, or the response's
    try:
        while True:
            watch.begin(stall)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watch.expired():
                    raise UpstreamTimeout(deployment, watch.reason(stall)) from None
                raise
            finally:
                watch.end()
            yield chunk
    finally:
        watch.close()


def reason(failure: UpstreamError) -> str:
    """A short name for a failure, for the summary of an exhausted chain."""
    if isinstance(failure, UpstreamHTTPError):
        return f"HTTP {failure.status}"
    return type(failure).__name__.removeprefix("Upstream")
