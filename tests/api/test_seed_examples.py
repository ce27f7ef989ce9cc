"""The five seed documents' own examples, run with `curl` against `main.py all` on the shipped
defaults, as a user who read them would: each answers 2xx with the field names the seed shows.

The commands are the seeds' (000: FD 5-6 summary, 002: the LLM metrics API, 003: the original
README, 004: the circuit-breaker write-up), host and port aside. Three placeholders are filled the
way a user would fill them: seed 003's `your-session-id` (the id its `initiate_call` example
created) and `optional-model-override` (a configured model), and seed 002's `<id>` (a
deployment). Seed 002's Python `record_request(...)` example is sent as the JSON body of
`POST /api/llm/record`, the route the seed gives for it. Seed 001 (the retry write-up) has no
HTTP example."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import interrupt, start_main_all

# (seed, the seed's command, the fields its answer must carry; dotted paths, `*` = every entry)
SEED_EXAMPLES: list[tuple[str, str, list[str]]] = [
    ("003", "curl http://localhost:8000/health", ["status", "providers", "db_ok"]),
    (
        "003",
        """curl -X POST http://localhost:8000/initiate_call \\
  -H "Content-Type: application/json" \\
  -d '{"session_id": "optional-session-id"}'""",
        ["session_id", "model"],
    ),
    (
        "003",
        """curl -X POST http://localhost:8000/chat_completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "session_id": "your-session-id",
    "message": "Hello, how are you?",
    "model": "optional-model-override"
  }'""",
        ["choices.0.message.content", "model", "session_id"],
    ),
    (
        "004",
        "curl http://localhost:8000/circuit-breakers",
        [
            f"circuit_breakers.*.{field}"
            for field in (
                "state",
                "total_requests",
                "total_successes",
                "total_failures",
                "total_timeouts",
                "uptime_seconds",
            )
        ],
    ),
    (
        "004",
        """curl -X POST http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{"messages": [{"role": "user", "content": "Hello"}]}'""",
        ["choices.0.message.content", "model", "usage.total_tokens"],
    ),
    (
        "004",
        "curl http://localhost:8000/metrics",
        ["circuit_breaker_state", "fallback_chain_tier_usage"],
    ),
    (
        "000",
        "curl http://localhost:8000/api/health",
        ["providers", "db_ok", "buffer_len", "last_flush_ms", "wal_size_bytes", "last_db_write"],
    ),
    (
        "000",
        "curl http://localhost:8000/api/metrics",
        ["buffer_len", "wal_size_bytes", "last_flush_ms", "attempts_total"],
    ),
    (
        "000",
        "curl http://localhost:8000/api/metrics/prometheus",
        ["llm_buffer_len", "llm_wal_size_bytes", "llm_attempts_total"],
    ),
    ("000", "curl http://localhost:8000/api/admin/fallback/queue", ["chains"]),
    (
        "000",
        """curl -X POST http://localhost:8000/api/admin/demo/run-single \\
  -H "Content-Type: application/json" \\
  -d '{"prompt": "Hello world", "model": "gpt-4"}'""",
        [
            f"demo_results.0.{field}"
            for field in (
                "request_id",
                "success",
                "final_model",
                "attempts",
                "tokens_generated",
                "duration_ms",
                "attempted_models",
            )
        ],
    ),
    (
        "000",
        "curl -X POST http://localhost:8000/api/admin/demo/run-scenarios",
        [
            "demo_results.0.final_model",
            "summary.fallback_statistics.total_fallback_attempts",
            "summary.current_metrics.attempts_total",
        ],
    ),
    (
        "000",
        "curl http://localhost:8000/api/admin/demo/summary",
        [
            "fallback_statistics.total_fallback_attempts",
            "fallback_statistics.total_fallback_successes",
            "fallback_statistics.success_rate",
            "current_metrics.buffer_len",
            "current_metrics.wal_size_bytes",
            "current_metrics.last_flush_ms",
            "current_metrics.attempts_total",
        ],
    ),
    (
        "000",
        "curl http://localhost:8000/api/admin/fallback/statistics",
        ["total_fallback_attempts", "total_fallback_successes", "success_rate"],
    ),
    ("000", "curl -X POST http://localhost:8000/api/admin/fallback/reset-statistics", ["reset"]),
    (
        "002",
        """curl -X POST http://localhost:8080/api/llm/record \\
  -d '{"provider_name": "ollama", "model": "llama3.2", "status": "success",
       "prompt_tokens": 150, "completion_tokens": 300, "duration_seconds": 0.52}'""",
        ["success", "id"],
    ),
    (
        "002",
        "curl http://localhost:8080/api/llm/providers",
        [
            f"providers.*.{field}"
            for field in (
                "name",
                "display_name",
                "provider_type",
                "is_available",
                "circuit_state",
                "total_requests",
                "successful_requests",
                "success_rate",
                "avg_response_time_ms",
                "status",
            )
        ],
    ),
    (
        "002",
        "curl 'http://localhost:8080/api/llm/metrics?provider=large-model&days=7'",
        [
            f"providers.*.{field}"
            for field in (
                "requests",
                "success_rate",
                "fallbacks",
                "tokens_in",
                "tokens_out",
                "avg_request_ms",
            )
        ],
    ),
    (
        "002",
        "curl 'http://localhost:8080/api/llm/metrics?provider=simulated&days=7'",
        ["providers.*.requests"],
    ),
    (
        "002",
        "curl 'http://localhost:8080/api/llm/costs?days=30'",
        [
            "total_cost_usd",
            "total_requests",
            "local_requests",
            "remote_requests",
            "estimated_savings_usd",
            "savings_percentage",
        ],
    ),
    ("002", "curl 'http://localhost:8080/api/llm/trends?days=7'", ["daily.0.providers"]),
    (
        "002",
        """curl -X POST http://localhost:8080/api/llm/providers/<id>/enable \\
  -d '{"enabled": true}'""",
        ["enabled"],
    ),
    (
        "002",
        "curl http://localhost:8080/api/llm/health",
        ["providers.healthy", "providers.down", "fallback_available"],
    ),
]
PLACEHOLDERS = {
    '"your-session-id"': '"optional-session-id"',
    '"optional-model-override"': '"small-model"',
    "<id>": "large-model:0",
}


@pytest.fixture(scope="module")
def gateway_all(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`main.py all`, untouched defaults, for the whole module."""
    proc, base = start_main_all(tmp_path_factory.mktemp("seeds"), os.environ.get("PATH", ""))
    yield base
    interrupt(proc)


def lookup(data: Any, path: list[str]) -> list[Any]:
    """Every value at a dotted path (`*` fans out over a mapping's values or a list)."""
    if not path:
        return [data]
    head, rest = path[0], path[1:]
    if head == "*":
        values = list(data.values()) if isinstance(data, dict) else list(data)
        assert values, "an empty collection where entries were expected"
        return [v for value in values for v in lookup(value, rest)]
    if isinstance(data, list):
        return lookup(data[int(head)], rest)
    assert isinstance(data, dict) and head in data, f"no '{head}' in {str(data)[:300]}"
    return lookup(data[head], rest)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "command", "fields"), SEED_EXAMPLES,
                         ids=[f"{s}:{c.split('localhost:')[1].split()[0]}" for s, c, _ in SEED_EXAMPLES])  # fmt: skip
def test_the_seed_example_answers_with_the_seeds_fields(
    gateway_all: str, seed: str, command: str, fields: list[str]
) -> None:
    port = gateway_all.rsplit(":", 1)[1]
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    command = command.replace("localhost:8000", f"127.0.0.1:{port}")
    command = command.replace("localhost:8080", f"127.0.0.1:{port}")
    argv = shlex.split(command.replace("\\\n", " "))  # the shell's line continuations
    # -sS: no progress meter; -w: the status on a last line of its own.
    out = subprocess.run([*argv, "-sS", "-w", "\n%{http_code}"], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    body, status = out.stdout.rsplit("\n", 1)
    assert 200 <= int(status) < 300, f"seed {seed}: {status} {body[:500]}"
    path = command.split(f"127.0.0.1:{port}", 1)[1].split()[0]
    if path in ("/metrics", "/api/metrics/prometheus"):  # Prometheus text, not JSON
        for name in fields:
            assert f"\n{name}" in body, f"seed {seed}: no {name} in the exposition"
        return
    data = json.loads(body)
    for field in fields:
        assert lookup(data, field.split(".")), field


def test_the_placeholders_are_in_the_examples() -> None:
    """Each placeholder filled above is in an example (a changed example would skip it)."""
    commands = " ".join(command for _, command, _ in SEED_EXAMPLES)
    assert all(placeholder in commands for placeholder in PLACEHOLDERS)


def test_every_seed_route_is_replayed() -> None:
    """Every route the seeds list (their API sections, not only their curl lines) is here."""
    routes = {
        "/health", "/initiate_call", "/chat_completions", "/circuit-breakers",
        "/v1/chat/completions", "/metrics", "/api/health", "/api/metrics",
        "/api/metrics/prometheus", "/api/admin/fallback/queue", "/api/admin/fallback/statistics",
        "/api/admin/fallback/reset-statistics", "/api/admin/demo/run-single",
        "/api/admin/demo/run-scenarios", "/api/admin/demo/summary", "/api/llm/providers",
        "/api/llm/metrics", "/api/llm/costs", "/api/llm/trends", "/api/llm/record",
        "/api/llm/providers/<id>/enable", "/api/llm/health",
    }  # fmt: skip
    replayed = {
        c.split("localhost:")[1].split()[0][4:].split("?")[0].rstrip("'")
        for _, c, _ in SEED_EXAMPLES
    }
    assert routes <= replayed, routes - replayed
