"""Adapter for every OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LocalAI, ...).

Real servers differ from OpenAI in small ways, and the adapter accepts them all: usage on the
last content chunk instead of a chunk of its own (`transformers serve`), no ``[DONE]`` after the
finish reason, a JSON answer to a streamed request, an error object in the middle of a stream.
What it does not accept is a stream that simply stops: no finish reason and no ``[DONE]`` is a
cut (`UpstreamStreamCut`), never a complete answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson

from services.errors import UpstreamHTTPError, UpstreamStreamCut
from services.platform.http_client import HTTPResponse
from services.providers.base import (
    ChunkStream,
    HTTPAdapter,
    Json,
    ResponseChunkStream,
    error_fields,
    is_json,
    read_json,
    redact,
    sse_batches,
)
from services.providers.shapes import chunk_ok, completion_chunks, completion_ok


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

    async def open_stream(self, request: Json) -> ChunkStream:
        """Forward the request streamed with the upstream model id, asking for usage."""
        options = dict(request.get("stream_options") or {})
        options["include_usage"] = True
        payload = {**request, "model": self.upstream_model, "stream": True}
        payload["stream_options"] = options
        resp = await self._post(payload)
        return ResponseChunkStream(resp, self._chunks)

    async def _chunks(self, resp: HTTPResponse, out: ResponseChunkStream) -> AsyncIterator[Json]:
        if is_json(resp):
            body = completion_ok(await read_json(resp, self.name, self._max_response), self.name)
            if "usage" in body:
                body["usage"] = out.usage(body["usage"])
            for chunk in completion_chunks(body):
                yield chunk
            return
        finished = False
        # Closed here, not left to the garbage collector: an abandoned async generator costs
        # the event loop a task to finalise it.
        async with contextlib.aclosing(
            sse_batches(resp, self.name, self._max_line, self._max_response)
        ) as batches:
            async for batch in batches:
                for _event, data in batch:
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        out.malformed += 1
                        continue
                    if not chunk_ok(chunk):
                        if type(chunk) is dict and "error" in chunk and "choices" not in chunk:
                            raise self._stream_error(data)
                        out.malformed += 1
                        continue
                    if chunk.get("usage") is not None:
                        chunk["usage"] = out.usage(chunk["usage"])
                    if not finished:
                        for choice in chunk.get("choices") or ():
                            if choice.get("finish_reason"):
                                finished = True
                    yield chunk
        if not finished:
            raise UpstreamStreamCut(self.name, "the stream ended without finish_reason or [DONE]")

    def _stream_error(self, data: bytes) -> UpstreamHTTPError:
        """An error object sent mid-stream (vLLM, proxies): its code if it is a status, else 500."""
        message, code, _ = error_fields(data)
        status = int(code) if code is not None and code.isdigit() else 500
        status = status if 400 <= status <= 599 else 500
        return UpstreamHTTPError(self.name, status, redact(message, self._secrets), code=code)
