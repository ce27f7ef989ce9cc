"""What an upstream answer must look like, checked at the adapter boundary, and how a stream of
chunks becomes one ``chat.completion``.

Upstreams are many and not all careful (vLLM, llama.cpp, `transformers serve`, proxies in
between), so the rule is: be liberal in what is merely unusual, strict in what would break us.

- A whole answer that is not a chat completion (no ``choices`` list, a choice that is not an
  object, a message whose content is not text) is an `UpstreamProtocolError`: it counts for the
  breaker and the walk fails over. It never reaches a client, and never becomes a 500.
- A stream chunk that is not JSON or not chunk-shaped is skipped and counted: one bad line must
  not end an otherwise good answer.
- Token counts must be non-negative integers below `MAX_TOKENS`; otherwise the usage block is
  dropped (and flagged), and the ledger estimates the tokens instead of billing nonsense.
"""

from __future__ import annotations

import time
from typing import Any

from services.errors import UpstreamProtocolError

Json = dict[str, Any]
# No model has a context of ten million tokens; a count above it is a broken or hostile upstream.
MAX_TOKENS = 10_000_000
TEXT_FIELDS = ("content", "reasoning_content", "refusal")
TEXT_KEYS = frozenset(TEXT_FIELDS)
HEAD_KEYS = ("id", "created", "model", "system_fingerprint")


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKENS


def clean_usage(usage: Any) -> Json | None:
    """The usage block with a consistent total, or None when its counts cannot be trusted."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    if not (_count(prompt) and _count(completion)):
        return None
    return {**usage, "total_tokens": prompt + completion}


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def chunk_ok(chunk: Any) -> bool:
    """Whether a parsed SSE payload is a ``chat.completion.chunk`` we can relay.

    On every chunk of every answer, so it walks the keys a delta has (usually one) instead of
    looking up every key it could have."""
    if type(chunk) is not dict:
        return False
    choices = chunk.get("choices")
    if choices is None:
        return "usage" in chunk  # a usage-only chunk from a server that omits `choices`
    if type(choices) is not list:
        return False
    for choice in choices:
        if type(choice) is not dict:
            return False
        delta = choice.get("delta")
        if delta is None:
            continue
        finish = choice.get("finish_reason")
        if type(delta) is not dict or (finish is not None and type(finish) is not str):
            return False
        for key, value in delta.items():
            if value is None:
                continue
            if key in TEXT_KEYS:
                if type(value) is not str:
                    return False
            elif key == "tool_calls" and (
                type(value) is not list or not all(type(c) is dict for c in value)
            ):
                return False
    return True


def completion_ok(data: Json, deployment: str) -> Json:
    """The answer if it is an OpenAI ``chat.completion``; `UpstreamProtocolError` if not."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UpstreamProtocolError(deployment, "answer has no choices")
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise UpstreamProtocolError(deployment, "a choice has no message object")
        if not all(_text_or_none(message.get(key)) for key in TEXT_FIELDS):
            raise UpstreamProtocolError(deployment, "a message's content is not text")
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise UpstreamProtocolError(deployment, "a message's tool_calls is not a list")
    return data


class _Choice:
    """What one choice of a stream has said so far."""

    __slots__ = ("calls", "finish", "text")

    def __init__(self) -> None:
        self.text: dict[str, list[str]] = {}
        self.calls: dict[int, Json] = {}
        self.finish: str | None = None


class Assembler:
    """Folds ``chat.completion.chunk`` objects into one ``chat.completion``.

    Used when a client asked for a whole answer: upstreams are always streamed from, so that a
    silent upstream is noticed within the first-token and stall deadlines (docs/resilience.md)."""

    def __init__(self) -> None:
        self.head: Json = {}
        self.usage: Json | None = None
        self._choices: dict[int, _Choice] = {}

    def add(self, chunk: Json) -> None:
        """Fold one chunk in."""
        if not self.head:
            self.head = {k: chunk[k] for k in HEAD_KEYS if k in chunk}
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            slot = self._choices.get(index)
            if slot is None:
                slot = self._choices[index] = _Choice()
            delta = choice.get("delta")
            if delta:
                for key, value in delta.items():
                    if not value:
                        continue
                    if key in TEXT_KEYS:
                        pieces = slot.text.get(key)
                        if pieces is None:
                            slot.text[key] = [value]
                        else:
                            pieces.append(value)
                    elif key == "tool_calls":
                        _merge_calls(slot.calls, value)
            finish = choice.get("finish_reason")
            if finish:
                slot.finish = finish

    def completion(self) -> Json:
        """The assembled ``chat.completion``."""
        choices = []
        for index in sorted(self._choices):
            slot = self._choices[index]
            message: Json = {
                "role": "assistant",
                "content": "".join(slot.text.get("content", ())) or None,
            }
            for key in ("reasoning_content", "refusal"):
                if key in slot.text:
                    message[key] = "".join(slot.text[key])
            if slot.calls:
                message["tool_calls"] = [
                    {"id": call.get("id"), "type": "function", "function": call["function"]}
                    for _, call in sorted(slot.calls.items())
                ]
            elif message["content"] is None:
                message["content"] = ""
            choices.append(
                {"index": index, "message": message, "finish_reason": slot.finish or "stop"}
            )
        body: Json = {"id": "", "object": "chat.completion", "created": 0, "model": ""}
        body.update(self.head)
        body["object"] = "chat.completion"
        body["choices"] = choices
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _merge_calls(calls: dict[int, Json], deltas: list[Json]) -> None:
    """Streamed tool-call fragments, joined by their index."""
    for call in deltas:
        merged = calls.setdefault(call.get("index", len(calls)), {})
        if call.get("id"):
            merged["id"] = call["id"]
        function = call.get("function") or {}
        target = merged.setdefault("function", {"name": "", "arguments": ""})
        if function.get("name"):
            target["name"] = function["name"]
        target["arguments"] += function.get("arguments") or ""


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
