"""What every provider adapter offers the router, and the HTTP plumbing they share.

An adapter takes an OpenAI chat-completions request (a dict, already validated) and returns an
OpenAI ``chat.completion`` dict, or a `ChunkStream` of ``chat.completion.chunk`` dicts. Failures
are raised as `services.errors.UpstreamError` subclasses so the router can classify them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from services.errors import (
    RETRYABLE_STATUSES,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

Json = dict[str, Any]


class ChunkStream(Protocol):
    """An open upstream stream: iterate for OpenAI chunks, always ``aclose`` when done."""

    def __aiter__(self) -> AsyncIterator[Json]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """One deployment's adapter."""

    name: str
    upstream_model: str

    async def complete(self, request: Json) -> Json:
        """Send a non-streaming request; answer an OpenAI chat.completion dict."""
        ...

    async def open_stream(self, request: Json) -> ChunkStream:
        """Send a streaming request; return once the upstream has accepted it (HTTP 2xx)."""
        ...

    async def probe(self) -> None:
        """A cheap request that proves the deployment answers; UpstreamError when it does not.
        The caller bounds it with `asyncio.timeout`."""
        ...


class HTTPAdapter:
    """What every HTTP adapter holds: its names, the shared session, timeouts, URL and headers."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        upstream_model: str,
        api_key: str | None,
        session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
        stream_timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.name = name
        self.upstream_model = upstream_model
        self._url = self.endpoint(base_url.rstrip("/"))
        self._models_url = self.models_endpoint(base_url.rstrip("/"))
        self._headers = {"Content-Type": "application/json", **self.auth_headers(api_key)}
        self._session = session
        self._timeout = timeout
        self._stream_timeout = stream_timeout

    def endpoint(self, base_url: str) -> str:
        """The chat URL under `base_url` (no trailing slash)."""
        raise NotImplementedError

    def models_endpoint(self, base_url: str) -> str:
        """The model-list URL under `base_url`: free to call, so the health monitor probes it."""
        raise NotImplementedError

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that carry the key and protocol version."""
        raise NotImplementedError

    async def probe(self) -> None:
        """GET the model list. Only an unreachable, timing-out or 408/429/5xx-answering server
        fails: a 401 or 404 still proves it is up (and the real call will say what is wrong)."""
        try:
            async with self._session.get(self._models_url, headers=self._headers) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(self.name, f"health probe: {type(exc).__name__}") from exc
        if status in RETRYABLE_STATUSES:
            raise UpstreamHTTPError(self.name, status, "health probe failed")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Parse a numeric Retry-After header (HTTP dates are rare from LLM APIs and ignored)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_detail(raw: bytes) -> str:
    """The upstream's own error message, shortened, for logs (never sent to clients as-is)."""
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
    except orjson.JSONDecodeError:
        pass
    return raw[:300].decode("utf-8", "replace")


async def post(
    session: aiohttp.ClientSession,
    deployment: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    client_timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    """POST and return the response once its status is 2xx; classify every failure."""
    try:
        resp = await session.post(url, data=body, headers=headers, timeout=client_timeout)
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "timed out before the response started") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(deployment, f"{type(exc).__name__}: {exc}") from exc
    if resp.status >= 300:
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            resp.release()
        raise UpstreamHTTPError(
            deployment, resp.status, error_detail(raw), retry_after_seconds(resp.headers)
        )
    return resp


async def read_json(resp: aiohttp.ClientResponse, deployment: str) -> Json:
    """Read a whole JSON body, translating transport and parse errors."""
    try:
        raw = await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "timed out reading the response") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(deployment, f"{type(exc).__name__}: {exc}") from exc
    finally:
        resp.release()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(deployment, "response is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamProtocolError(deployment, "response is not a JSON object")
    return data


async def sse_events(
    resp: aiohttp.ClientResponse, deployment: str
) -> AsyncIterator[tuple[str, bytes]]:
    """Yield (event, data) pairs of a text/event-stream body; transport errors are classified.

    Implements the parts of the SSE grammar LLM APIs use: ``event:`` and (possibly several)
    ``data:`` lines, dispatched on a blank line; comments (``:``) and ``id:``/``retry:`` ignored.
    """
    event = "message"
    data: list[bytes] = []
    try:
        async for raw_line in resp.content:
            line = raw_line.rstrip(b"\r\n")
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = "message", []
                continue
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
        if data:
            yield event, b"\n".join(data)
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "stream stalled") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(deployment, f"stream broke: {type(exc).__name__}") from exc


class ResponseChunkStream:
    """Owns an upstream response and the async iterator that translates it into chunks."""

    def __init__(self, resp: aiohttp.ClientResponse, chunks: AsyncIterator[Json]) -> None:
        self._resp = resp
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._chunks

    async def aclose(self) -> None:
        """Stop translating and give the connection back (or drop it, if mid-body)."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        self._resp.release()


def check_completion(data: Json, deployment: str) -> Json:
    """Reject an answer that is not an OpenAI chat.completion."""
    if not isinstance(data.get("choices"), list):
        raise UpstreamProtocolError(deployment, "response has no choices")
    return data


__all__ = [
    "ChunkStream",
    "HTTPAdapter",
    "Json",
    "Provider",
    "ResponseChunkStream",
    "UpstreamError",
    "check_completion",
    "post",
    "read_json",
    "sse_events",
]
