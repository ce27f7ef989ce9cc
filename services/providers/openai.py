"""Adapter for every OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LocalAI, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson

from services.errors import UpstreamProtocolError
from services.providers.base import (
    ChunkStream,
    HTTPAdapter,
    Json,
    ResponseChunkStream,
    check_completion,
    post,
    read_json,
    sse_events,
)


class OpenAIProvider(HTTPAdapter):
    """Speaks ``POST {base_url}/chat/completions``, JSON and SSE, with a Bearer key."""

    def endpoint(self, base_url: str) -> str:
        """OpenAI-compatible servers put chat completions right under the versioned base URL."""
        return base_url + "/chat/completions"

    def models_endpoint(self, base_url: str) -> str:
        """``GET /models``, which every OpenAI-compatible server answers."""
        return base_url + "/models"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """A Bearer token when a key is configured (local servers usually need none)."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

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
