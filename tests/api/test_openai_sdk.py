"""The official openai SDK, pointed at the gateway's /v1, works unchanged (sync, async, streams)."""

from __future__ import annotations

from contextlib import ExitStack

import openai
import pytest

from tests.helpers import GatewayServer, SimProcess

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_sync_completion_has_router_headers(
    closing: ExitStack, gateway: GatewayServer, primary: SimProcess
) -> None:
    """A non-streamed completion comes back parsed, named by the client-facing model, with headers."""
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    raw = client.chat.completions.with_raw_response.create(model="default", messages=MESSAGES)
    completion = raw.parse()
    assert completion.model == "primary"
    assert completion.choices[0].message.content.startswith("[primary-upstream]")
    assert completion.usage is not None and completion.usage.completion_tokens == 24
    assert raw.headers["x-router-model"] == "primary"
    assert raw.headers["x-router-attempts"] == "1"
    assert raw.headers["x-router-fallback"] == "false"
    assert len(raw.headers["x-request-id"]) == 16
    assert primary.stats()["requests"] == 1


def test_sync_stream_ends_with_done_and_usage_on_request(
    closing: ExitStack, gateway: GatewayServer
) -> None:
    """A streamed completion yields every token in order, and usage only when asked for."""
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    chunks = list(
        client.chat.completions.create(
            model="primary", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[primary-upstream] the gateway routed")
    assert len(text.split()) == 24
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
    assert all(c.model == "primary" for c in chunks)

    plain = list(client.chat.completions.create(model="primary", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in plain)  # the gateway asked upstream; the client did not


async def test_async_client_plain_and_streamed(gateway: GatewayServer) -> None:
    """AsyncOpenAI gets the same answers as the sync client."""
    client = openai.AsyncOpenAI(base_url=gateway.base + "/v1", api_key="unused")
    completion = await client.chat.completions.create(model="secondary", messages=MESSAGES)
    assert completion.choices[0].message.content.startswith("[secondary-upstream]")
    stream = await client.chat.completions.create(model="secondary", messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces).startswith("[secondary-upstream]")
    await client.close()


def test_unknown_model_is_a_404_the_sdk_understands(
    closing: ExitStack, gateway: GatewayServer
) -> None:
    """The SDK raises NotFoundError with the envelope's message for an unknown model."""
    client = closing.enter_context(
        openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused", max_retries=0)
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message


def test_models_lists_models_and_chains(closing: ExitStack, gateway: GatewayServer) -> None:
    """GET /v1/models lists every model and chain through the SDK."""
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    ids = {m.id for m in client.models.list()}
    assert ids == {"primary", "secondary", "claude", "default", "bare"}
