"""The anthropic adapter speaks the real Messages protocol, JSON and SSE, both ways."""

from __future__ import annotations

from contextlib import ExitStack

import anthropic
import openai

from services.providers.anthropic import to_chat_completion, to_messages_request
from tests.helpers import GatewayServer, SimProcess


def test_simulator_speaks_messages_api_to_the_official_sdk(
    closing: ExitStack, secondary: SimProcess
) -> None:
    """The official anthropic SDK parses the simulator's answers, so tests below use the real format."""
    client = closing.enter_context(anthropic.Anthropic(base_url=secondary.base, api_key="test-key"))
    message = client.messages.create(
        model="claude-sim", max_tokens=10, messages=[{"role": "user", "content": "hello there"}]
    )
    assert message.content[0].text.startswith("[claude-sim]")
    assert message.usage.output_tokens == 10 and message.stop_reason == "end_turn"
    with client.messages.stream(
        model="claude-sim", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("[claude-sim]") and final.usage.output_tokens == 5


def test_gateway_translates_json_through_anthropic(
    closing: ExitStack, gateway: GatewayServer
) -> None:
    """An OpenAI request to a model with an anthropic deployment comes back in OpenAI shape."""
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    completion = client.chat.completions.create(
        model="claude",
        max_tokens=7,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert completion.model == "claude"
    assert completion.choices[0].message.content.startswith("[claude-sim]")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 7


def test_gateway_translates_sse_through_anthropic(
    closing: ExitStack, gateway: GatewayServer
) -> None:
    """Anthropic SSE events become OpenAI chunks: role, text deltas, finish reason, usage."""
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    chunks = list(
        client.chat.completions.create(
            model="claude",
            max_tokens=6,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.startswith("[claude-sim]") and len(text.split()) == 6
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_request_translation_covers_system_images_tools_and_stops() -> None:
    """System prompts, image parts, tool definitions/calls/results and stop map to Messages fields."""
    request = {
        "model": "x",
        "max_tokens": 50,
        "temperature": 0.2,
        "stop": "END",
        "messages": [
            {"role": "system", "content": "rule one"},
            {"role": "developer", "content": "rule two"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\": 1}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }  # fmt: skip
    out = to_messages_request(request, "claude-up")
    assert out["model"] == "claude-up" and out["max_tokens"] == 50 and out["temperature"] == 0.2
    assert out["system"] == "rule one\n\nrule two"
    assert out["stop_sequences"] == ["END"]
    assert out["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    }  # fmt: skip
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}}
    ]
    assert out["messages"][2] == {
        "role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"}]
    }  # fmt: skip
    assert out["tools"] == [{"name": "look", "description": "", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "any"}


def test_response_translation_of_tool_use_and_cached_usage() -> None:
    """tool_use blocks become tool_calls; cached input tokens count as prompt tokens."""
    completion = to_chat_completion(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-up",
            "content": [{"type": "tool_use", "id": "tu_1", "name": "look", "input": {"q": 2}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 4},
        },
        "claude:0",
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "look",
        "arguments": '{"q":2}',
    }
    assert completion["usage"] == {"prompt_tokens": 13, "completion_tokens": 4, "total_tokens": 17}
