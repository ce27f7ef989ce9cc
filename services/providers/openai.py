"""Adapter for every OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LocalAI, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson

from services.errors import UpstreamProtocolError
from services.providers.base import (
    ChunkStream,
    Json,
    ResponseChunkStream,
    check_completion,
    post,
    read_json,
    sse_events,
)


class OpenAIProvider:
    """Speaks ``POST {base_url}/chat/completions``, JSON and SSE, with a Bearer key."""

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
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._timeout = timeout
        self._stream_timeout = stream_timeout

    async def complete(self, request: Json) -> Json:
        """Forward the request with the upstream model id; answer the upstream's completion."""
        payload = {**request, "model": self.upstream_model, "stream": False}
        payload.pop("stream_options", None)  # OpenAI rejects it on non-streaming requests
        body = orjson.dumps(payload)
        resp = await post(self._session, self.name, self._url, body, self._headers, self._timeout)
        return check_completion(await read_json(resp, self.name), self.name)

    async def open_stream(self, request: Json) -> ChunkStream:
        """Forward a streaming request, asking for a final usage chunk."""
        options = dict(request.get("stream_options") or {})
        options["include_usage"] = True
        payload = {**request, "model": self.upstream_model, "stream": True}
        payload["stream_options"] = options
        body = orjson.dumps(payload)
        resp = await post(
            self._session, self.name, self._url, body, self._headers, self._stream_timeout
        )
        return ResponseChunkStream(resp, self._chunks(resp))

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Json]:
        async for _event, data in sse_events(resp, self.name):
            if data == b"[DONE]":
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise UpstreamProtocolError(self.name, "stream chunk is not JSON") from exc
            if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                raise UpstreamProtocolError(self.name, f"stream error: {chunk['error']}")
            if isinstance(chunk, dict):
                yield chunk
