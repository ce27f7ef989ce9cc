"""Adapter for Anthropic's Messages API, translated to and from OpenAI chat shapes.

Request: system/developer messages become ``system``; ``content`` parts (text, image_url) become
content blocks; ``tools``/``tool_calls``/``tool`` messages become tool_use/tool_result blocks.
Response and SSE events (message_start, content_block_*, message_delta, message_stop, error) become
``chat.completion`` and ``chat.completion.chunk`` objects with OpenAI finish reasons and usage.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from services.errors import UpstreamHTTPError, UpstreamProtocolError, UpstreamStreamCut
from services.platform.http_client import HTTPResponse
from services.providers.base import (
    ChunkStream,
    HTTPAdapter,
    Json,
    ResponseChunkStream,
    is_json,
    read_json,
    redact,
    sse_batches,
)
from services.providers.shapes import clean_usage, completion_chunks, completion_ok

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _blocks(content: Any) -> list[Json]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Json] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:") and ";base64," in url:
                media_type, data = url[5:].split(";base64,", 1)
                source: Json = {"type": "base64", "media_type": media_type, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks


def _tool_use_blocks(tool_calls: Any) -> list[Json]:
    blocks = []
    for call in tool_calls or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": arguments,
            }
        )
    return blocks


def to_messages_request(request: Json, upstream_model: str) -> Json:
    """Translate an OpenAI chat request into an Anthropic Messages request."""
    system: list[str] = []
    messages: list[Json] = []
    for message in request.get("messages", []):
        role = message.get("role")
        if role in {"system", "developer"}:
            system.append(_text_of(message.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": _text_of(message.get("content")),
            }
            messages.append({"role": "user", "content": [block]})
        elif role in {"user", "assistant"}:
            blocks = _blocks(message.get("content"))
            if role == "assistant":
                blocks += _tool_use_blocks(message.get("tool_calls"))
            messages.append({"role": role, "content": blocks})
    out: Json = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": request.get("max_completion_tokens")
        or request.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    for key in ("temperature", "top_p"):
        if request.get(key) is not None:
            out[key] = request[key]
    stop = request.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("user"):
        out["metadata"] = {"user_id": str(request["user"])}
    if request.get("tools"):
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object"},
            }
            for t in request["tools"]
            if isinstance(t, dict) and t.get("type") == "function"
        ]
        choice = request.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif isinstance(choice, dict) and "function" in choice:
            out["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
        elif choice in {"auto", "none"}:
            out["tool_choice"] = {"type": choice}
    return out


def _usage(usage: Any) -> Json | None:
    """OpenAI usage from Anthropic's, or None when the counts are not sane integers."""
    if not isinstance(usage, dict):
        return None
    parts = [
        usage.get(key) or 0
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    if not all(type(p) is int for p in parts):
        return None
    return clean_usage(
        {"prompt_tokens": sum(parts), "completion_tokens": usage.get("output_tokens") or 0}
    )


def to_chat_completion(message: Json, deployment: str) -> Json:
    """Translate an Anthropic Messages response into an OpenAI chat.completion."""
    content = message.get("content")
    if (
        message.get("type") != "message"
        or not isinstance(content, list)
        or not all(isinstance(b, dict) for b in content)
        or not all(isinstance(b.get("text", ""), str) for b in content)
    ):
        raise UpstreamProtocolError(deployment, "response is not a Messages API message")
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    tool_calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {
                "name": b.get("name"),
                "arguments": orjson.dumps(b.get("input", {})).decode(),
            },
        }
        for b in content
        if b.get("type") == "tool_use"
    ]
    reply: Json = {"role": "assistant", "content": text or (None if tool_calls else "")}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    completion: Json = {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": FINISH_REASONS.get(str(message.get("stop_reason")), "stop"),
            }
        ],
    }
    usage = _usage(message.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion_ok(completion, deployment)


class AnthropicProvider(HTTPAdapter):
    """Speaks ``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    def endpoint(self, base_url: str) -> str:
        """Accept both ``https://api.anthropic.com`` and ``.../v1`` as the base URL."""
        return base_url + ("/messages" if base_url.endswith("/v1") else "/v1/messages")

    def models_endpoint(self, base_url: str) -> str:
        """Anthropic's ``GET /v1/models``."""
        return base_url + ("/models" if base_url.endswith("/v1") else "/v1/models")

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """The version header always; the key when there is one."""
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    async def open_stream(self, request: Json) -> ChunkStream:
        """Translate and send a streaming request; chunks come back in OpenAI shape."""
        payload = to_messages_request(request, self.upstream_model)
        payload["stream"] = True
        return ResponseChunkStream(await self._post(payload), self._chunks)

    async def _chunks(self, resp: HTTPResponse, out: ResponseChunkStream) -> AsyncIterator[Json]:
        if is_json(resp):  # the server ignored `stream: true`
            raw = await read_json(resp, self.name, self._max_response)
            body = to_chat_completion(raw, self.name)
            out.usage_rejected = "usage" in raw and "usage" not in body
            for translated in completion_chunks(body):
                yield translated
            return
        translator = StreamTranslator(self.name, self.upstream_model, self._secrets, out)
        # Closed here when message_stop returns early (an abandoned generator costs a task).
        batches = sse_batches(resp, self.name, self._max_line, self._max_response)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for event, data in batch:
                    try:
                        payload = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        payload = None
                    if not isinstance(payload, dict):
                        out.malformed += 1  # one bad event must not end a good answer
                        continue
                    for translated in translator.event(payload.get("type", event), payload):
                        yield translated
                    if translator.stopped:
                        return
        if not translator.finished:
            raise UpstreamStreamCut(self.name, "the stream ended without a stop reason")


class StreamTranslator:
    """Messages API stream events in, OpenAI chat.completion.chunk dicts out, for one answer."""

    def __init__(
        self, deployment: str, model: str, secrets: tuple[str, ...], out: ResponseChunkStream
    ) -> None:
        self._deployment = deployment
        self._secrets = secrets
        self._out = out
        self.message_id, self.model, self.created = "", model, int(time.time())
        self.usage: Json = {}
        self.finished = False  # a stop reason arrived
        self.stopped = False  # message_stop: nothing more to read
        self.tool_index: dict[int, int] = {}  # content block index -> OpenAI tool_calls index

    def chunk(self, delta: Json, finish: str | None = None) -> Json:
        return {
            "id": self.message_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def event(self, kind: str, payload: Json) -> Iterator[Json]:
        """The chunks one event becomes (often none); raises on an `error` event."""
        if kind == "message_start":
            message = payload.get("message") or {}
            self.message_id = str(message.get("id", ""))
            self.model = str(message.get("model", self.model))
            if isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
            yield self.chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = self.tool_index.setdefault(payload.get("index", 0), len(self.tool_index))
                call = {
                    "index": position,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                yield self.chunk({"tool_calls": [call]})
        elif kind == "content_block_delta":
            yield from self._delta(payload)
        elif kind == "message_delta":
            if isinstance(payload.get("usage"), dict):
                self.usage.update(payload["usage"])
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.finished = True
                yield self.chunk({}, FINISH_REASONS.get(str(reason), "stop"))
        elif kind == "message_stop":
            final = self.chunk({})
            final["choices"] = []
            final["usage"] = _usage(self.usage)
            if final["usage"] is None:
                self._out.usage_rejected = True
            self.stopped = True
            yield final
        elif kind == "error":
            error = payload.get("error") or {}
            status = 529 if error.get("type") == "overloaded_error" else 500
            message = redact(str(error.get("message", "stream error"))[:300], self._secrets)
            raise UpstreamHTTPError(self._deployment, status, message)

    def _delta(self, payload: Json) -> Iterator[Json]:
        delta = payload.get("delta") or {}
        if not isinstance(delta, dict) or not isinstance(delta.get("text", ""), str):
            self._out.malformed += 1
        elif delta.get("type") == "text_delta":
            yield self.chunk({"content": delta.get("text", "")})
        elif delta.get("type") == "input_json_delta":
            position = self.tool_index.get(payload.get("index", 0), 0)
            partial = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
            yield self.chunk({"tool_calls": [partial]})
