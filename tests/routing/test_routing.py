"""The chain walk: failover across models, streaming failover before the first token only."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import openai
import pytest

from tests.helpers import GatewayServer, SimProcess, http

TURN = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
BARE = {**TURN, "model": "bare"}


@pytest.mark.parametrize(
    ("fault", "primary_attempts"),
    [
        ({"failure_rate": 1.0, "failure_mode": "status", "failure_status": 500}, 3),
        # A Retry-After over the cap (5 s) is not waited for: the walk fails over at once.
        ({"failure_rate": 1.0, "failure_mode": "status", "failure_status": 429,
          "retry_after": 30}, 1),
        ({"failure_rate": 1.0, "failure_mode": "drop"}, 3),
    ],
)  # fmt: skip
def test_failing_primary_falls_back_to_secondary(
    gateway: GatewayServer,
    primary: SimProcess,
    secondary: SimProcess,
    fault: dict[str, object],
    primary_attempts: int,
) -> None:
    """5xx, 429 and dropped connections on the primary are retried there (default: 2 retries),
    then answered by the secondary."""
    primary.behave(**fault)
    status, headers, raw = http("POST", gateway.base + "/v1/chat/completions", TURN)
    assert status == 200
    assert json.loads(raw)["model"] == "secondary"
    assert headers["x-router-fallback"] == "true"
    assert headers["x-router-attempts"] == str(primary_attempts + 1)
    assert primary.stats()["requests"] == primary_attempts
    assert secondary.stats()["requests"] == 1


def test_upstream_client_errors_are_not_failed_over(
    gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A 400 from the upstream says the request is bad: no other model is tried, the client gets 400."""
    primary.behave(failure_rate=1.0, failure_mode="status", failure_status=400)
    status, _, raw = http("POST", gateway.base + "/v1/chat/completions", TURN)
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "upstream_rejected"
    assert secondary.stats()["requests"] == 0


def test_everything_down_without_tiers_is_503_naming_each_failure(
    gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A chain with no tiers answers 503 upstream_exhausted (with Retry-After), no upstream URL."""
    primary.behave(failure_rate=1.0, failure_status=503)
    secondary.behave(failure_rate=1.0, failure_status=500)
    status, headers, raw = http("POST", gateway.base + "/v1/chat/completions", BARE)
    error = json.loads(raw)["error"]
    assert status == 503 and error["code"] == "upstream_exhausted"
    assert headers["retry-after"] == "1"
    assert "primary:0: HTTP 503" in error["message"] and "secondary:0: HTTP 500" in error["message"]
    assert "127.0.0.1" not in error["message"]


def test_stream_fails_over_when_primary_fails_before_first_token(
    closing: ExitStack, gateway: GatewayServer, primary: SimProcess
) -> None:
    """A stream whose upstream dies after only the role chunk is silently served by the next model."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=1)
    client = closing.enter_context(openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused"))
    chunks = list(client.chat.completions.create(**TURN, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[secondary-upstream]")
    assert {c.model for c in chunks} == {"secondary"}


def test_stream_failing_after_first_token_ends_with_error_event(
    gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """Once a token reached the client, an upstream failure that nothing can continue ends the
    stream with an SSE error event and no [DONE]."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=2)
    secondary.behave(failure_rate=1.0, failure_status=503)
    with httpx.stream(
        "POST", gateway.base + "/v1/chat/completions", json={**TURN, "stream": True}
    ) as resp:
        assert resp.status_code == 200
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "[primary-upstream]"
    assert json.loads(events[-1][6:])["error"]["code"] == "stream_interrupted"
    assert "data: [DONE]" not in events


def test_stream_everything_down_is_an_error_response_not_a_stream(
    closing: ExitStack, gateway: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """If no upstream starts a stream, the client gets a normal error status before any SSE."""
    primary.behave(failure_rate=1.0)
    secondary.behave(failure_rate=1.0)
    client = closing.enter_context(
        openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused", max_retries=0)
    )
    with pytest.raises(openai.APIStatusError) as caught:
        list(client.chat.completions.create(**BARE, stream=True))
    assert caught.value.status_code == 503
