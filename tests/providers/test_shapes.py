"""What an upstream answer must look like at the adapter boundary, and chunk assembly (pure)."""

from __future__ import annotations

import pytest

from services.errors import UpstreamProtocolError
from services.providers.base import probe_url, redact, upstream_http_error
from services.providers.shapes import (
    MAX_TOKENS,
    Assembler,
    chunk_ok,
    clean_usage,
    completion_chunks,
    completion_ok,
)

GOOD = {
    "id": "c",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": "1", "completion_tokens": 1},
        {"prompt_tokens": 1.5, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 1},
        {"completion_tokens": 1},
        "12",
        None,
    ],
)
def test_untrustworthy_usage_is_refused(usage: object) -> None:
    """Negative, non-integer, absurd or missing counts are not billed."""
    assert clean_usage(usage) is None


def test_usage_total_is_recomputed() -> None:
    """A wrong total_tokens is replaced by the sum; other fields are kept."""
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 99, "x": 1}
    assert clean_usage(usage) == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                                  "x": 1}  # fmt: skip


@pytest.mark.parametrize(
    "chunk",
    [[1], {"choices": [1]}, {"choices": [{"delta": "x"}]}, {"choices": "x"},
     {"choices": [{"delta": {"content": 5}}]}, {"choices": [{"delta": {"tool_calls": "x"}}]},
     {"object": "chunk"}],
)  # fmt: skip
def test_wrong_shaped_chunks_are_refused(chunk: object) -> None:
    """Chunks a client could not parse are refused (the adapter skips and counts them)."""
    assert not chunk_ok(chunk)


def test_real_world_chunks_are_accepted() -> None:
    """OpenAI's `usage: null`, usage-only chunks with or without `choices`, finish-only deltas."""
    assert chunk_ok({"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": None})
    assert chunk_ok({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    assert chunk_ok({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    assert chunk_ok({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})


@pytest.mark.parametrize(
    "body",
    [{"choices": []}, {"choices": [1]}, {"choices": [{"delta": "x"}]},
     {"choices": [{"message": {"content": 3}}]}, {"choices": [{"message": {"tool_calls": 1}}]}],
)  # fmt: skip
def test_wrong_shaped_answers_are_protocol_errors(body: dict[str, object]) -> None:
    """A whole answer that is not a chat completion fails the attempt (and counts)."""
    with pytest.raises(UpstreamProtocolError):
        completion_ok(body, "d")


def test_assembling_the_chunks_of_a_completion_gives_it_back() -> None:
    """Replayed as chunks and assembled again, a completion (tool calls too) is unchanged."""
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    body = {**GOOD, "choices": [{"index": 0, "finish_reason": "tool_calls",
                                 "message": {"role": "assistant", "content": None,
                                             "tool_calls": [call]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}  # fmt: skip
    assembler = Assembler()
    for chunk in completion_chunks(body):
        assembler.add(chunk)
    again = assembler.completion()
    assert again["choices"][0]["message"]["tool_calls"] == [call]
    assert again["choices"][0]["finish_reason"] == "tool_calls"
    assert again["usage"] == body["usage"] and again["id"] == "c"


def test_split_tool_call_arguments_are_joined() -> None:
    """Streamed argument fragments of one call are concatenated in order."""
    assembler = Assembler()
    for piece in ['{"a"', ": 1", "}"]:
        delta = {"tool_calls": [{"index": 0, "id": "t", "function": {"arguments": piece}}]}
        assembler.add({"choices": [{"index": 0, "delta": delta}]})
    calls = assembler.completion()["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["arguments"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"error": {"message": "too long", "code": "context_length_exceeded"}}',
         "UpstreamContextLength"),
        (b'{"type": "error", "error": {"type": "invalid_request_error", '
         b'"message": "prompt is too long: 250000 tokens > 200000 maximum"}}',
         "UpstreamContextLength"),
        (b'{"error": {"message": "filtered", "code": "content_filter"}}', "UpstreamContentPolicy"),
        (b'{"error": {"message": "bad temperature"}}', "UpstreamHTTPError"),
    ],
)  # fmt: skip
def test_upstream_400s_are_told_apart(body: bytes, kind: str) -> None:
    """OpenAI's and Anthropic's context-length errors, content filters, other 400s."""
    assert type(upstream_http_error("d", 400, body, {})).__name__ == kind


def test_credentials_in_upstream_error_text_are_redacted() -> None:
    """A Bearer token, an x-api-key value, an sk- key or a known secret never survive."""
    text = "bad header Authorization: Bearer sk-live-123456789 x-api-key: abcdef secret42"
    clean = redact(text, ("secret42",))
    assert "123456789" not in clean and "abcdef" not in clean and "secret42" not in clean
    forging = redact("oops\n2099-01-01 00:00:00.000 | CRITICAL | x\x1b[2J")
    assert "\n" not in forging and "\x1b" not in forging and "\\n2099" in forging, (
        "upstream text reaches log lines: control characters are escaped"
    )


def test_probe_urls() -> None:
    """Default: the provider's model list; `/health` from the server's root; else under base."""
    base = "http://h:8000/v1"
    assert probe_url(base, None, base + "/models") == base + "/models"
    assert probe_url(base, "/health", "") == "http://h:8000/health"
    assert probe_url(base, "models", "") == base + "/models"
