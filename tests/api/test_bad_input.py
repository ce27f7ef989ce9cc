"""Bad input always gets a 4xx in the OpenAI envelope: never a 500, a trace or a Redis key."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import GatewayServer, http


def _assert_envelope(status: int, raw: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, raw[:300]
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "code"}
    assert "Traceback" not in error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("path", "raw", "expected", "code"),
    [
        ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("/v1/chat/completions", b"", 400, "empty_body"),
        ("/v1/chat/completions", b"\xff\xfe{}", 400, "invalid_json"),
        ("/v1/chat/completions", b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        ("/chat_completions", b'{"session_id": ', 400, "invalid_json"),
        ("/initiate_call", b"nope", 400, "invalid_json"),
    ],
)
def test_malformed_bodies_are_400(
    gateway: GatewayServer, path: str, raw: bytes, expected: int, code: str
) -> None:
    """Unparseable bodies (truncated, invalid UTF-8, absurdly nested) are 400 invalid_json."""
    status, _, body = http(
        "POST", gateway.base + path, raw=raw, headers={"Content-Type": "application/json"}
    )
    assert _assert_envelope(status, body, expected)["code"] == code


@pytest.mark.parametrize(
    "body",
    [
        [],
        "a string",
        {"model": "primary"},
        {"model": "primary", "messages": []},
        {"model": "primary", "messages": "hi"},
        {"model": "primary", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "primary", "messages": [{"role": "user", "content": 5}]},
        {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        {"model": 7, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
    ],
)
def test_wrong_shapes_are_422(gateway: GatewayServer, body: Any) -> None:
    """Well-formed JSON of the wrong shape or type is 422 naming the field."""
    status, _, raw = http("POST", gateway.base + "/v1/chat/completions", body)
    assert _assert_envelope(status, raw, 422)["code"] == "invalid_schema"


def test_session_turn_needs_exactly_one_of_message_or_messages(gateway: GatewayServer) -> None:
    """Both or neither of message/messages is a 422 that says which to send."""
    for body in (
        {"session_id": "s"},
        {"session_id": "s", "message": "a", "messages": [{"role": "user", "content": "b"}]},
    ):
        status, _, raw = http("POST", gateway.base + "/chat_completions", body)
        assert "exactly one of 'message'" in _assert_envelope(status, raw, 422)["message"]


@pytest.mark.parametrize(
    "session_id", ["../x", "*", "a" * 10_000, "abc\ndef", "a b", "", "x\r\nSET k v", "ключ"]
)
def test_hostile_session_ids_never_reach_redis(
    gateway: GatewayServer, redis_client: redis.Redis, session_id: str
) -> None:
    """Ids that could escape a key prefix or smuggle commands are refused before any Redis call."""
    for path, body in (
        ("/initiate_call", {"session_id": session_id}),
        ("/chat_completions", {"session_id": session_id, "message": "hi"}),
    ):
        status, _, raw = http("POST", gateway.base + path, body)
        _assert_envelope(status, raw, 422)
    assert redis_client.keys("fr:session:*") == []


@pytest.mark.parametrize("header", ["../x", "*", "a" * 300])
def test_hostile_x_session_id_is_refused(
    gateway: GatewayServer, redis_client: redis.Redis, header: str
) -> None:
    """The X-Session-ID header is validated like a body session id."""
    body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
    status, _, raw = http(
        "POST", gateway.base + "/v1/chat/completions", body, headers={"X-Session-ID": header}
    )
    _assert_envelope(status, raw, 422)
    assert redis_client.keys("fr:session:*") == []


def test_unknown_model_and_chain_are_404(gateway: GatewayServer) -> None:
    """A model name that is valid but not configured is 404 model_not_found, in both APIs."""
    body = {"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}
    status, _, raw = http("POST", gateway.base + "/v1/chat/completions", body)
    assert _assert_envelope(status, raw, 404)["code"] == "model_not_found"
    status, _, raw = http("POST", gateway.base + "/initiate_call", {"model": "gpt-17"})
    assert _assert_envelope(status, raw, 404)["code"] == "model_not_found"


def test_hostile_model_names_are_422(gateway: GatewayServer) -> None:
    """Model names with control characters or wildcards fail validation before routing."""
    for model in ("a\nb", "*", "x" * 500):
        status, _, raw = http("POST", gateway.base + "/initiate_call", {"model": model})
        _assert_envelope(status, raw, 422)


def test_oversized_body_is_413(gateway: GatewayServer) -> None:
    """A body over api.max_body_bytes (1 MiB by default) is refused with 413."""
    big = {"model": "primary", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    status, _, raw = http("POST", gateway.base + "/v1/chat/completions", big)
    assert _assert_envelope(status, raw, 413)["code"] == "payload_too_large"


def test_unknown_route_and_method_use_the_envelope(gateway: GatewayServer) -> None:
    """404 and 405 from routing are enveloped too, and every response has a request id."""
    status, headers, raw = http("GET", gateway.base + "/nope")
    _assert_envelope(status, raw, 404)
    assert headers["x-request-id"]
    status, _, raw = http("GET", gateway.base + "/v1/chat/completions")
    _assert_envelope(status, raw, 405)


def test_client_request_id_is_echoed_only_when_safe(gateway: GatewayServer) -> None:
    """A plain X-Request-ID is kept; one with odd characters is replaced."""
    assert (
        http("GET", gateway.base + "/livez", headers={"X-Request-ID": "abc-123"})[1]["x-request-id"]
        == "abc-123"
    )
    replaced = http("GET", gateway.base + "/livez", headers={"X-Request-ID": "a b<script>"})[1][
        "x-request-id"
    ]
    assert replaced != "a b<script>" and len(replaced) == 16


def test_admin_posts_read_a_json_body_sent_without_a_content_type(gateway: GatewayServer) -> None:
    """`curl -d '{"enabled": false}'` style: no Content-Type, still JSON, like the chat routes;
    and the 503 that follows says the deployment was disabled."""
    url = gateway.base + "/api/llm/providers/primary:0/enable"
    for enabled in (False, True):
        raw = json.dumps({"enabled": enabled}).encode()
        sent = httpx.post(url, content=raw)  # httpx sets no Content-Type for raw bytes
        assert "content-type" not in sent.request.headers
        status, body = sent.status_code, sent.content
        assert status == 200 and json.loads(body) == {"name": "primary:0", "enabled": enabled}
        if not enabled:
            turn = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
            status, _, answer = http("POST", gateway.base + "/v1/chat/completions", turn)
            error = _assert_envelope(status, answer, 503)
            assert "primary:0: disabled by an operator" in error["message"]


def test_a_browser_page_of_another_site_cannot_call_a_keyless_gateway(
    gateway: GatewayServer,
) -> None:
    """Without API keys the gateway trusts its loopback; a cross-site page's fetch (which a
    browser marks `Sec-Fetch-Site: cross-site`) is refused, same-origin calls are not."""
    url = gateway.base + "/api/llm/providers/primary:0/enable"
    raw = b'{"enabled": false}'
    status, _, body = http("POST", url, raw=raw, headers={"Sec-Fetch-Site": "cross-site"})
    assert _assert_envelope(status, body, 403)["code"] == "cross_site_request"
    status, _, _ = http(
        "GET", gateway.base + "/v1/models", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert status == 200
