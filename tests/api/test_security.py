"""API keys, rate limits, hostile input and secrets (SPEC §10), against a real server and Redis."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.api.auth import KeyRing, bind_refusal, required_role
from services.api.rate_limit import RateLimiter
from services.app import create_app
from services.config import RateLimitSettings, effective_config
from services.platform.logs import AccessLog, configure_logging
from services.platform.redis_gate import RedisGate
from services.platform.redis_topology import async_redis
from services.routing.turn import TurnRecord
from tests.helpers import (
    FakeClock,
    GatewayServer,
    SimProcess,
    http,
    openai_model,
    settings_for,
    wait_until,
)

CLIENT_KEY = "fr-client-4f9a1c0e7d2b"
OTHER_CLIENT_KEY = "fr-client-77aa01bb92cc"
ADMIN_KEY = "fr-admin-c3d2e1f0a9b8"
UPSTREAM_KEY = "sk-upstream-never-shown-5e6f"
ENVIRON = {"FR_API_KEYS": f"{CLIENT_KEY}, {OTHER_CLIENT_KEY}", "FR_ADMIN_KEY": ADMIN_KEY,
           "SIM_UPSTREAM_KEY": UPSTREAM_KEY}  # fmt: skip


@pytest.fixture
def secured(redis_url: str, primary: SimProcess, tmp_path: Path) -> Iterator[GatewayServer]:
    """A gateway with client and admin keys, an upstream key, a 3-requests-per-minute limit, and
    its log file where the test can read it."""
    models = {"primary": openai_model(primary.openai_url, "p", api_key_env="SIM_UPSTREAM_KEY")}
    settings = settings_for(redis_url, tmp_path / "logs", models,
                            resilience={"health": {"enabled": False}},
                            api={"rate_limit": {"requests_per_minute": 3}})  # fmt: skip
    sink = configure_logging("api_server", settings.log,
                             secrets=[UPSTREAM_KEY, *KeyRing.from_env(ENVIRON).secrets])  # fmt: skip
    app = create_app(settings, environ=ENVIRON, access_log=AccessLog(sink, json_lines=False))
    with GatewayServer(app) as server:
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


TURN = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
# (method, path, body, role): every route of the app; a test checks the list is complete.
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("POST", "/initiate_call", {}, "client"),
    ("POST", "/chat_completions", {"session_id": "s", "message": "hi"}, "client"),
    ("POST", "/v1/chat/completions", TURN, "client"),
    ("GET", "/v1/models", None, "client"),
    ("GET", "/circuit-breakers", None, "client"),
    ("POST", "/circuit-breakers/primary:0/reset", {}, "admin"),
    ("GET", "/api/admin/fallback/queue", None, "admin"),
    ("GET", "/api/admin/fallback/statistics", None, "admin"),
    ("POST", "/api/admin/fallback/reset-statistics", {}, "admin"),
    ("GET", "/api/llm/providers", None, "client"),
    ("GET", "/api/llm/metrics?days=1", None, "client"),
    ("GET", "/api/llm/costs?days=1", None, "client"),
    ("GET", "/api/llm/trends?days=1", None, "client"),
    ("GET", "/api/llm/health", None, "client"),
    ("POST", "/api/llm/record", {"model": "primary", "tokens_in": 1, "tokens_out": 1}, "admin"),
    ("POST", "/api/llm/providers/primary:0/enable", {"enabled": True}, "admin"),
    ("GET", "/api/admin/budgets", None, "admin"),
    ("PUT", "/api/admin/budgets/anonymous", {"budget_usd": 1.0}, "admin"),
    ("GET", "/livez", None, "public"),
    ("GET", "/readyz", None, "public"),
    ("GET", "/health", None, "public"),
    ("GET", "/metrics", None, "metrics"),
    ("GET", "/api/health", None, "public"),
    ("GET", "/api/metrics", None, "metrics"),
    ("GET", "/api/metrics/prometheus", None, "metrics"),
    ("POST", "/api/admin/demo/run-single", {"prompt": "hi"}, "admin"),
    ("POST", "/api/admin/demo/run-scenarios", {}, "admin"),
    ("GET", "/api/admin/demo/summary", None, "admin"),
    ("GET", "/api/admin/console", None, "admin"),
    ("GET", "/api/admin/alerts", None, "admin"),
    ("POST", "/api/admin/alerts/test", {}, "admin"),
    ("GET", "/openapi.json", None, "public"),
]


def test_every_route_is_classified(secured: GatewayServer) -> None:
    """A new route cannot slip in unlisted: the app's routes are exactly the table's paths."""
    paths = json.loads(http("GET", secured.base + "/openapi.json")[2])["paths"]
    listed = {path.split("?")[0] for _, path, _, _ in ENDPOINTS}
    for path, methods in paths.items():
        concrete = path.replace("{name}", "primary:0").replace("{key_id}", "anonymous")
        assert concrete in listed, f"{path} is not in the auth table of this test"
        for method in methods:
            roles = {
                r for m, p, _, r in ENDPOINTS if p.split("?")[0] == concrete and m == method.upper()
            }
            assert roles == {required_role(method.upper(), concrete)}, (method, path)


@pytest.mark.parametrize(("method", "path", "body", "role"), ENDPOINTS)
def test_keys_are_required_where_they_should_be(
    secured: GatewayServer, method: str, path: str, body: Any, role: str
) -> None:
    url = secured.base + path
    status, headers, raw = http(method, url, body)
    if role in ("public", "metrics"):  # /metrics: public while no api.metrics_key is set
        assert status not in (401, 403)
        return
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(raw)["error"]["code"] == "missing_api_key"
    for wrong in ("Bearer not-a-key", f"Basic {CLIENT_KEY}", "Bearer ", CLIENT_KEY):
        status, _, raw = http(method, url, body, {"Authorization": wrong})
        assert status == 401, (wrong, raw)
    status, _, raw = http(method, url, body, bearer(CLIENT_KEY))
    if role == "admin":
        assert status == 403 and json.loads(raw)["error"]["code"] == "insufficient_permissions"
    else:
        assert status not in (401, 403), raw
    status, _, raw = http(method, url, body, bearer(ADMIN_KEY))
    assert status not in (401, 403), "the admin key is accepted wherever a client key is"


def test_rate_limit_answers_429_with_retry_after_per_key(secured: GatewayServer) -> None:
    """3 requests per minute per key: the next gets 429 and Retry-After; another key is not
    affected. (If the minute turns mid-test the count restarts, hence 'within 7'.)"""
    url = secured.base + "/v1/chat/completions"
    statuses = []
    for _ in range(7):
        status, headers, raw = http("POST", url, TURN, bearer(CLIENT_KEY))
        statuses.append(status)
        if status == 429:
            error = json.loads(raw)["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
            assert 1 <= int(headers["retry-after"]) <= 60
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    assert http("POST", url, TURN, bearer(OTHER_CLIENT_KEY))[0] == 200


async def test_limits_recover_in_the_next_window_count_tokens_and_fail_open(
    topology_redis_url: str,
) -> None:
    client = async_redis(topology_redis_url, timeout=5)
    gate = RedisGate(client)
    clock = FakeClock(1_800_000_000.0)  # the start of a minute
    limiter = RateLimiter(client, gate, RateLimitSettings(requests_per_minute=2,
                          tokens_per_minute=100), prefix="t:", clock=clock)  # fmt: skip
    assert await limiter.admit("k") is None and await limiter.admit("k") is None
    clock.now += 15
    assert await limiter.admit("k") == 45, "Retry-After: the seconds left in the minute"
    clock.now += 45  # the next minute
    assert await limiter.admit("k") is None, "recovered"
    limiter.turn_finished(TurnRecord(request_id="r", session_id=None, selector="default",
                          caller="k", status=200, outcome="ok", model="m", route="primary",
                          tokens_in=100, tokens_out=50))  # fmt: skip
    await limiter.flush()
    assert await limiter.admit("k") == 60, "tokens used up for this minute"
    gate.mark_down(ConnectionError("redis went away"))
    assert await limiter.admit("k") is None, "fail open while Redis is down"
    await client.aclose()


def raw_request(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_hostile_inputs_get_4xx(secured: GatewayServer) -> None:
    url = secured.base + "/v1/chat/completions"
    auth = bearer(CLIENT_KEY)
    cases: dict[str, tuple[Any, bytes | None]] = {
        "10,000 messages": ({"model": "primary",
                             "messages": [{"role": "user", "content": "x"}] * 10_000}, None),
        "NUL in content": ({"model": "primary",
                            "messages": [{"role": "user", "content": "a\u0000b"}]}, None),
        "content over the limit": ({"model": "primary",
                                    "messages": [{"role": "user", "content": "y" * 200_001}]}, None),
        "NUL bytes raw": (None, b'{"model": "primary",\x00\x00 "messages": []}'),
        "invalid UTF-8": (None, b'{"model": "\xc3\x28", "messages": []}'),
        "deep nesting": (None, b'{"model": "primary", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    }  # fmt: skip
    for name, (body, raw) in cases.items():
        status, _, answer = http("POST", url, body, auth, raw=raw, timeout=30)
        assert 400 <= status < 500, (name, status, answer[:200])
        assert set(json.loads(answer)["error"]) == {"message", "type", "code"}, name
    # A 10 MB body: refused from its Content-Length (413), and read and dropped first, so that
    # a client that writes it all before reading gets the answer, not a reset connection.
    big = {"model": "primary", "messages": [], "pad": "z" * 10_000_000}
    status, _, answer = http("POST", url, big, auth, timeout=60)
    assert status == 413 and json.loads(answer)["error"]["code"] == "payload_too_large"
    # Raw requests, for what clients refuse to send.
    key = f"Authorization: Bearer {CLIENT_KEY}\r\n".encode()
    # Headers: injection attempts and an oversized block.
    injected = raw_request(secured.base, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + key +
                           b"X-Request-ID: a\rSet-Cookie: evil=1\r\n\r\n")  # fmt: skip
    assert injected.startswith(b"HTTP/1.1 4") and b"evil" not in injected
    huge = raw_request(secured.base, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + key +
                       b"X-Pad: " + b"p" * 20_000 + b"\r\n\r\n")  # fmt: skip
    assert huge.split(b" ")[1] in (b"400", b"431"), huge[:100]
    status, headers, _ = http("GET", secured.base + "/v1/models",
                              headers={**auth, "X-Request-ID": "ok<script>evil"})  # fmt: skip
    assert status == 200 and "evil" not in headers["x-request-id"]


def test_no_secret_in_any_response_or_log_line(secured: GatewayServer, tmp_path: Path) -> None:
    """Client keys, the admin key and the upstream key appear in no answer and no log line,
    after traffic that logs (a failed key, a 429, an upstream answer, admin views)."""
    answers = [
        http("GET", secured.base + "/health")[2],
        http("GET", secured.base + "/metrics")[2],
        http("GET", secured.base + "/circuit-breakers", headers=bearer(ADMIN_KEY))[2],
        http("GET", secured.base + "/api/llm/providers", headers=bearer(ADMIN_KEY))[2],
        http("GET", secured.base + "/api/admin/fallback/queue", headers=bearer(ADMIN_KEY))[2],
        http("GET", secured.base + "/v1/models", headers=bearer("wrong-" + CLIENT_KEY))[2],
    ]
    for _ in range(5):  # through the rate limit
        answers.append(http("POST", secured.base + "/v1/chat/completions", TURN,
                            bearer(CLIENT_KEY))[2])  # fmt: skip
    logs = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("*.log"))
    assert b"/v1/chat/completions" in logs, "the log was written"
    for secret in (CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY, UPSTREAM_KEY):
        for answer in answers:
            assert secret.encode() not in answer
        assert secret.encode() not in logs, secret


def test_no_keys_means_loopback_only() -> None:
    none = KeyRing([], None)
    assert bind_refusal("127.0.0.1", none) is None and bind_refusal("::1", none) is None
    assert bind_refusal("localhost", none) is None
    assert "refusing" in (bind_refusal("0.0.0.0", none) or "")
    assert bind_refusal("gateway.example", none) is not None, "a hostname may be public"
    assert bind_refusal("0.0.0.0", KeyRing(["k"], None)) is None


def test_keys_compare_by_digest_and_name_callers_by_id() -> None:
    ring = KeyRing.from_env({"FR_API_KEYS": " a-key ,, b-key", "FR_ADMIN_KEY": "boss"})
    a = ring.identify("a-key")
    assert a is not None and not a.admin and a.key_id != "a-key" and len(a.key_id) == 12
    assert ring.identify("a-ke") is None and ring.identify("") is None
    boss = ring.identify("boss")
    assert boss is not None and boss.admin


def test_a_path_cannot_forge_a_log_line(secured: GatewayServer, tmp_path: Path) -> None:
    """`%0A` in a path decodes to a newline; the access line escapes it, so the forged text stays
    inside the one line of that request."""
    forged = "/livez%0A2099-01-01%2000:00:00.000%20%7C%20CRITICAL%20%7C%20forged:line:1%20-%20owned"
    status, _, _ = http("GET", secured.base + forged)
    assert status in (401, 404)  # an unknown route: it asks for a key first

    def request_lines() -> list[bytes]:
        logs = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("*.log"))
        return [line for line in logs.splitlines() if b"forged:line" in line]

    # The access line is written once the response has gone out: wait for it.
    wait_until(lambda: request_lines(), what="the access line")
    lines = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("*.log")).splitlines()
    assert not [line for line in lines if line.startswith(b"2099-01-01")], "no forged line"
    written = request_lines()
    assert len(written) == 1 and b"/livez\\n2099-01-01" in written[0]
    assert b"| INFO     | access" in written[0]


def test_a_session_belongs_to_the_key_that_created_it(secured: GatewayServer) -> None:
    """Another key gets 404 for it, on a turn, on /initiate_call (no re-pin) and through
    X-Session-ID; its owner keeps using it."""
    base, mine, theirs = secured.base, bearer(CLIENT_KEY), bearer(OTHER_CLIENT_KEY)
    status, _, raw = http("POST", base + "/initiate_call", {"model": "primary"}, mine)
    session_id = json.loads(raw)["session_id"]
    turn = {"session_id": session_id, "message": "hi"}
    status, _, raw = http("POST", base + "/chat_completions", turn, theirs)
    assert status == 404 and json.loads(raw)["error"]["code"] == "session_not_found"
    status, _, _ = http("POST", base + "/initiate_call", {"session_id": session_id}, theirs)
    assert status == 404, "no re-pin of another key's session"
    with_header = {**theirs, "X-Session-ID": session_id}
    assert http("POST", base + "/v1/chat/completions", TURN, with_header)[0] == 404
    assert http("POST", base + "/chat_completions", turn, mine)[0] == 200


def test_initiate_call_counts_against_the_rate_limit(secured: GatewayServer) -> None:
    """3 requests per minute: the fourth /initiate_call is a 429 with Retry-After."""
    statuses = [http("POST", secured.base + "/initiate_call", {}, bearer(CLIENT_KEY))
                for _ in range(4)]  # fmt: skip
    assert [s for s, _, _ in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1][1]["retry-after"]) >= 1


def test_metrics_can_require_a_scrape_key(
    redis_url: str, primary: SimProcess, tmp_path: Path
) -> None:
    """With `api.metrics_key`, /metrics needs that key (or the admin key); a client key is
    refused, and the key is never logged nor shown by check-config."""
    scrape_key = "fr-metrics-0123456789abcdef"
    models = {"primary": openai_model(primary.openai_url, "p")}
    settings = settings_for(redis_url, tmp_path / "logs", models, api={"metrics_key": scrape_key},
                            resilience={"health": {"enabled": False}})  # fmt: skip
    with GatewayServer(create_app(settings, environ=ENVIRON)) as server:
        url = server.base + "/metrics"
        assert http("GET", url)[0] == 401
        assert http("GET", url, headers=bearer(CLIENT_KEY))[0] == 401
        status, _, body = http("GET", url, headers=bearer(scrape_key))
        assert status == 200 and b"llm_buffer_len" in body
        assert http("GET", url, headers=bearer(ADMIN_KEY))[0] == 200
        assert http("GET", server.base + "/health")[0] == 200, "probes stay public"
    assert effective_config(settings, {})["api"]["metrics_key"] == "***"


def test_usage_views_show_a_client_key_only_its_own_usage(
    secured: GatewayServer, tmp_path: Path
) -> None:
    """Two client keys use the gateway; each sees its own requests in /api/llm/costs, /metrics
    and /trends, the admin key sees them all, and the ledger holds key ids, never keys."""
    for key, turns in ((CLIENT_KEY, 2), (OTHER_CLIENT_KEY, 1)):
        for _ in range(turns):
            assert http("POST", secured.base + "/v1/chat/completions", TURN, bearer(key))[0] == 200

    def costs(key: str) -> dict[str, Any]:
        return dict(json.loads(http("GET", secured.base + "/api/llm/costs?days=1",
                                    headers=bearer(key))[2]))  # fmt: skip

    wait_until(lambda: costs(ADMIN_KEY)["total_requests"] == 3, what="the ledger flush")
    mine, theirs, everyone = costs(CLIENT_KEY), costs(OTHER_CLIENT_KEY), costs(ADMIN_KEY)
    assert (mine["total_requests"], theirs["total_requests"]) == (2, 1)
    assert everyone["scope"] == "all" and mine["scope"].startswith("key:")
    assert mine["scope"] != theirs["scope"]
    trends = json.loads(http("GET", secured.base + "/api/llm/trends?days=1",
                             headers=bearer(OTHER_CLIENT_KEY))[2])  # fmt: skip
    assert sum(day["requests"] for day in trends["daily"]) == 1
    metrics = json.loads(http("GET", secured.base + "/api/llm/metrics?days=1",
                              headers=bearer(CLIENT_KEY))[2])  # fmt: skip
    assert sum(p["requests"] for p in metrics["providers"].values()) == 2
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        owners = {row[0] for row in db.execute("SELECT DISTINCT api_key_id FROM llm_records")}
    assert owners == {mine["scope"].removeprefix("key:"), theirs["scope"].removeprefix("key:")}
    assert not owners & {CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY}, "key ids, never keys"


def test_an_upstream_that_echoes_our_credentials_leaks_nothing(
    secured: GatewayServer, primary: SimProcess, tmp_path: Path
) -> None:
    """The upstream's 400 repeats our request headers, its API key among them: the client gets a
    400 that names the problem, and the key is in no answer and no log line."""
    primary.behave(failure_rate=1.0, failure_mode="echo_headers")
    status, _, body = http("POST", secured.base + "/v1/chat/completions", TURN, bearer(CLIENT_KEY))
    assert status == 400 and b"bad request headers" in body
    assert UPSTREAM_KEY.encode() not in body and b"Bearer ***" in body
    wait_until(lambda: b"bad request headers" in b"".join(
        p.read_bytes() for p in (tmp_path / "logs").glob("*.log")), what="the log line")  # fmt: skip
    logs = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("*.log"))
    assert UPSTREAM_KEY.encode() not in logs


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_cookie_is_not_sent_back_on_later_requests(
    redis_url: str, primary: SimProcess, tmp_path: Path, stream: bool
) -> None:
    """A provider's load balancer sets a cookie on an answer to one client: no later request,
    another client's included, carries it (the upstream pool has no cookie jar). The upstream
    is named `localhost`: aiohttp's default jar ignores cookies of bare IP addresses."""
    url = primary.openai_url.replace("127.0.0.1", "localhost")
    settings = settings_for(redis_url, tmp_path / "logs", {"primary": openai_model(url, "p")},
                            resilience={"health": {"enabled": False}})  # fmt: skip
    primary.behave(set_cookie=True)
    before = primary.stats()
    with GatewayServer(create_app(settings, environ={})) as server:
        for _ in range(3):
            status, _, _ = http("POST", server.base + "/v1/chat/completions",
                                {**TURN, "stream": stream})  # fmt: skip
            assert status == 200
    after = primary.stats()
    assert after["requests"] - before["requests"] == 3
    assert after["requests_with_cookie"] == before["requests_with_cookie"] == 0
