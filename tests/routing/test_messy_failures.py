"""Messy upstream failures against real simulated servers, with the shipped default settings:
hangs, slow and stalled streams, cut and malformed streams, one-off errors, 400s that another
model can take. Clients are the official openai SDK (and raw SSE where the wire matters)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from services.app import create_app
from services.dev.simulator import WORDS
from services.platform.redis_connection import free_port
from tests.helpers import (
    GatewayServer,
    SimProcess,
    api_process,
    healthy,
    http,
    openai_model,
    settings_for,
    single_model_config,
    wait_until,
)

TOKENS = 60


def full_text(upstream_model: str, tokens: int = TOKENS) -> str:
    """What the simulator answers, uninterrupted, as `upstream_model`."""
    words = [f"[{upstream_model}]"] + [WORDS[i % len(WORDS)] for i in range(tokens - 1)]
    return " ".join(words)


@pytest.fixture
def sims_60(primary: SimProcess, secondary: SimProcess) -> tuple[SimProcess, SimProcess]:
    """Both simulators answering 60 tokens, so a cut after 40 leaves 20 to continue."""
    primary.behave(response_tokens=TOKENS)
    secondary.behave(response_tokens=TOKENS)
    return primary, secondary


def defaults_gateway(
    redis_url: str, tmp_path: Path, models: dict[str, Any], chains: dict[str, Any]
) -> GatewayServer:
    """A gateway with nothing but the models and chains configured: every default shipped."""
    return GatewayServer(create_app(settings_for(redis_url, tmp_path / "logs", models, chains),
                                    environ={}))  # fmt: skip


@pytest.fixture
def gw(
    redis_url: str, sims_60: tuple[SimProcess, SimProcess], tmp_path: Path
) -> Iterator[GatewayServer]:
    """`default`: primary (OpenAI protocol) then secondary, a prefill-capable simulated server;
    `instructed`: the same with a secondary that takes continuation instructions instead."""
    primary, secondary = sims_60
    models = {
        "primary": openai_model(primary.openai_url, "primary-upstream"),
        "secondary": {
            "deployments": [
                {
                    "provider": "simulated",
                    "base_url": secondary.openai_url,
                    "model": "secondary-upstream",
                }
            ]
        },
        "plain": openai_model(secondary.openai_url, "secondary-upstream"),
    }
    chains = {"default": ["primary", "secondary"], "instructed": ["primary", "plain"]}
    with defaults_gateway(redis_url, tmp_path, models, chains) as server:
        yield server


def client(stack: ExitStack, server: GatewayServer) -> openai.OpenAI:
    return stack.enter_context(
        openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    )


def ask(model: str = "default", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "tell me"}], **extra}


def sse(server: GatewayServer, body: dict[str, Any]) -> list[str]:
    """The raw `data:` payloads of a streamed answer."""
    with httpx.stream("POST", server.base + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as resp:  # fmt: skip
        assert resp.status_code == 200
        return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def text_of(events: list[str]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, [e for e in events if e != "[DONE]"])
        if c.get("choices")
    )


# -- hangs ---------------------------------------------------------------------------------------


def test_hung_primary_hands_over_within_eleven_seconds(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A primary that accepts the connection and never answers: the fallback answers in <= 11 s
    (the default 10 s first-token deadline), and the primary is not retried."""
    primary.behave(failure_rate=1.0, failure_mode="hang", hang_seconds=120)
    started = time.monotonic()
    answer = client(closing, gw).chat.completions.create(**ask())
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == full_text("secondary-upstream")
    assert 9.5 <= elapsed <= 11, elapsed
    assert primary.stats()["requests"] == 1 and secondary.stats()["requests"] == 1
    breakers = json.loads(http("GET", gw.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert breakers["primary:0"]["total_timeouts"] == breakers["primary:0"]["total_failures"] == 1
    assert breakers["secondary:0"]["total_timeouts"] == 0


def test_headers_then_silence_hands_over_within_eleven_seconds_streamed(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess
) -> None:
    """Response headers, then nothing: the first-token deadline covers it; streamed via the SDK."""
    primary.behave(failure_rate=1.0, failure_mode="hang_after_headers", drop_after_events=0,
                   hang_seconds=120)  # fmt: skip
    started = time.monotonic()
    chunks = list(client(closing, gw).chat.completions.create(**ask(), stream=True))
    elapsed = time.monotonic() - started
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full_text("secondary-upstream")
    assert 9.5 <= elapsed <= 11, elapsed


# -- streams that break after content reached the client -----------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"failure_mode": "drop_mid_stream"},
        {"failure_mode": "truncate"},  # ends cleanly: no finish_reason, no [DONE]
        {"failure_mode": "oversized_line"},
    ],
)
def test_stream_cut_after_forty_tokens_is_continued_by_prefill(
    gw: GatewayServer, primary: SimProcess, secondary: SimProcess, fault: dict[str, Any]
) -> None:
    """Cut after 40 of 60 tokens: the client gets the complete answer, once, ending in [DONE]."""
    primary.behave(failure_rate=1.0, drop_after_events=41, **fault)
    events = sse(gw, ask())
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert text_of(events) == full_text("primary-upstream")
    assert all("error" not in json.loads(e) for e in events[:-1])
    assert len({json.loads(e)["id"] for e in events[:-1]}) == 1  # one answer, one id
    assert secondary.stats()["requests"] == 1


def test_stream_stalled_after_forty_tokens_is_continued_within_the_stall_deadline(
    gw: GatewayServer, primary: SimProcess
) -> None:
    """Silence mid-answer with the connection open: after the default 10 s stall deadline the
    rest comes from the fallback."""
    primary.behave(failure_rate=1.0, failure_mode="stall_mid_stream", drop_after_events=41,
                   hang_seconds=120)  # fmt: skip
    started = time.monotonic()
    events = sse(gw, ask())
    assert 9.5 <= time.monotonic() - started <= 12
    assert events[-1] == "[DONE]" and text_of(events) == full_text("primary-upstream")


def test_continuation_by_instruction_removes_the_repeated_words(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess
) -> None:
    """A fallback without prefill is asked to continue; the words it repeats are not sent twice."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=41)
    chunks = list(client(closing, gw).chat.completions.create(**ask("instructed"), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full_text("primary-upstream")


def test_a_fallback_refusing_prefill_gives_the_original_interruption(
    gw: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """The fallback's 400 ("does not support assistant message prefill") never reaches the
    client: the stream ends with the original interruption and no [DONE]."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=41)
    secondary.behave(prefill="reject")
    events = sse(gw, ask())
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted"
    # The primary's cut (a dropped connection), not the fallback's refusal.
    assert "UpstreamConnectError" in error["message"]
    assert "prefill" not in events[-1]
    assert text_of(events[:-1]).startswith(full_text("primary-upstream", 40))


def test_a_continued_stream_still_ends_with_usage_for_a_client_that_asked(
    gw: GatewayServer, primary: SimProcess
) -> None:
    """Broken after its first word and continued: one usage chunk at the end, estimated for the
    part whose upstream took its count with it."""
    primary.behave(failure_rate=1.0, failure_mode="drop_mid_stream", drop_after_events=2)
    events = sse(gw, ask(stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]" and text_of(events) == full_text("primary-upstream")
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == -(-len(full_text("primary-upstream")) // 4)


# -- malformed answers ---------------------------------------------------------------------------


def test_one_malformed_chunk_does_not_end_a_good_answer(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A garbage `data:` line (and a chunk of the wrong shape) in a good stream is skipped and
    counted; the answer is complete, streamed and not, with no fallback."""
    sdk = client(closing, gw)
    primary.behave(failure_rate=1.0, failure_mode="malformed_chunk", drop_after_events=5)
    chunks = list(sdk.chat.completions.create(**ask(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full_text(
        "primary-upstream"
    )
    primary.behave(bogus_body={"choices": [{"delta": "x"}]})
    answer = sdk.chat.completions.with_raw_response.create(**ask())
    assert answer.parse().choices[0].message.content == full_text("primary-upstream")
    assert answer.headers["x-router-fallback"] == "false"
    assert secondary.stats()["requests"] == 0
    metrics = http("GET", gw.base + "/metrics")[2].decode()
    assert 'llm_upstream_anomalies_total{deployment="primary:0",kind="malformed_chunk"} 2.0' in (
        metrics
    )


@pytest.mark.parametrize(
    "bogus",
    [{"choices": [1]}, {"choices": [{"delta": "x"}]}, {"choices": "no"}, {"object": "list"}, []],
)
def test_a_whole_answer_that_is_not_a_completion_fails_over(
    closing: ExitStack,
    gw: GatewayServer,
    primary: SimProcess,
    secondary: SimProcess,
    bogus: Any,
) -> None:
    """A 200 whose JSON is not a chat completion counts for the breaker and fails over: the
    client gets the fallback's answer, never a 500."""
    primary.behave(failure_rate=1.0, failure_mode="bogus", bogus_body=bogus)
    answer = client(closing, gw).chat.completions.with_raw_response.create(**ask())
    assert answer.status_code == 200 and answer.headers["x-router-fallback"] == "true"
    assert answer.parse().choices[0].message.content == full_text("secondary-upstream")
    view = json.loads(http("GET", gw.base + "/circuit-breakers")[2])["circuit_breakers"]
    assert view["primary:0"]["total_failures"] == 1


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 10},
        {"prompt_tokens": "12", "completion_tokens": 10},
        {"prompt_tokens": 10**12, "completion_tokens": 10},
        "lots",
    ],
)
def test_absurd_usage_is_replaced_by_an_estimate(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess, usage: Any
) -> None:
    """Token counts that are not sane integers are dropped and estimated, and flagged; the
    answer itself is served."""
    primary.behave(usage_override=usage)
    sdk = client(closing, gw)
    answer = sdk.chat.completions.create(**ask())
    assert answer.choices[0].message.content == full_text("primary-upstream")
    streamed = list(sdk.chat.completions.create(**ask(), stream=True,
                                                stream_options={"include_usage": True}))  # fmt: skip
    final = streamed[-1].usage
    assert final is None or (final.prompt_tokens >= 0 and final.prompt_tokens < 10**6)
    metrics = http("GET", gw.base + "/metrics")[2].decode()
    assert 'kind="usage_rejected"} 2.0' in metrics


def test_usage_reaches_only_clients_that_asked(gw: GatewayServer, primary: SimProcess) -> None:
    """`transformers serve` puts usage on its last content chunk: stripped unless asked for,
    and then sent as one usage chunk at the end."""
    primary.behave(usage_on_last_chunk=True)
    plain = sse(gw, ask())
    assert all("usage" not in json.loads(e) for e in plain[:-1])
    asked = sse(gw, ask(stream_options={"include_usage": True}))
    assert [("usage" in json.loads(e)) for e in asked[:-1]].count(True) == 1
    assert json.loads(asked[-2])["usage"]["completion_tokens"] == TOKENS


# -- retries of the same upstream ----------------------------------------------------------------


def test_a_single_500_is_answered_by_the_same_upstream_on_its_second_attempt(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """One 500, then healthy: retried on the primary, no fallback."""
    primary.behave(fail_next=1, failure_status=500)
    answer = client(closing, gw).chat.completions.with_raw_response.create(**ask())
    assert answer.headers["x-router-fallback"] == "false"
    assert answer.headers["x-router-attempts"] == "2"
    assert primary.stats()["requests"] == 2 and secondary.stats()["requests"] == 0


@pytest.mark.parametrize(("retry_after", "least"), [(2, 1.8), (None, 0.0)])
def test_429_is_retried_on_the_same_upstream_after_retry_after(
    closing: ExitStack,
    gw: GatewayServer,
    primary: SimProcess,
    secondary: SimProcess,
    retry_after: float | None,
    least: float,
) -> None:
    """429 with Retry-After: 2 is retried on the primary after >= 1.8 s; without it, after
    full-jitter backoff."""
    primary.behave(fail_next=1, failure_status=429, retry_after=retry_after)
    started = time.monotonic()
    answer = client(closing, gw).chat.completions.with_raw_response.create(**ask())
    assert time.monotonic() - started >= least
    assert answer.headers["x-router-model"] == "primary"
    assert primary.stats()["requests"] == 2 and secondary.stats()["requests"] == 0


def test_a_cut_whole_answer_is_retried_not_returned(
    closing: ExitStack, gw: GatewayServer, primary: SimProcess
) -> None:
    """A non-streamed answer whose upstream stream ends without finish_reason or [DONE] is an
    interruption: retried, never returned truncated."""
    primary.behave(fail_next=1, failure_mode="truncate", drop_after_events=20)
    answer = client(closing, gw).chat.completions.create(**ask())
    assert answer.choices[0].message.content == full_text("primary-upstream")
    assert primary.stats()["requests"] == 2


# -- 400s that mean "another model would do" ------------------------------------------------------


def test_context_length_goes_to_the_larger_model(
    redis_url: str, sims_60: tuple[SimProcess, SimProcess], tmp_path: Path
) -> None:
    """`context_length_exceeded` skips the same-size secondary and goes to the larger model; a
    request too long for every model is a 400 in the envelope."""
    primary, secondary = sims_60
    models = {
        "small": {**openai_model(primary.openai_url, "small-up"), "context_window": 8192},
        "same": {**openai_model(primary.openai_url, "same-up"), "context_window": 8192},
        "large": {**openai_model(secondary.openai_url, "large-up"), "context_window": 128000},
    }
    chains = {"default": ["small", "same", "large"], "no-larger": ["small", "same"]}
    with defaults_gateway(redis_url, tmp_path, models, chains) as server:
        primary.behave(failure_rate=1.0, failure_mode="context_length")
        status, headers, raw = http("POST", server.base + "/v1/chat/completions", ask())
        assert status == 200 and headers["x-router-model"] == "large"
        assert headers["x-router-fallback"] == "true"
        assert primary.stats()["requests"] == 1  # never retried, `same` never tried
        status, _, raw = http("POST", server.base + "/v1/chat/completions", ask("no-larger"))
        error = json.loads(raw)["error"]
        assert status == 400 and error["code"] == "context_length_exceeded"
        assert "maximum context length" in error["message"]


def test_content_policy_rejection_is_a_400_content_filter(
    gw: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """A content-policy refusal is returned as 400 `content_filter` with the upstream's reason:
    no retry, no other model."""
    primary.behave(failure_rate=1.0, failure_mode="content_filter")
    status, _, raw = http("POST", gw.base + "/v1/chat/completions", ask())
    error = json.loads(raw)["error"]
    assert status == 400 and error["code"] == "content_filter"
    assert "content management policy" in error["message"]
    assert primary.stats()["requests"] == 1 and secondary.stats()["requests"] == 0


# -- probes that fit real servers ----------------------------------------------------------------


def test_a_failing_models_path_does_not_take_out_a_server_that_chats(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """`/v1/models` answers 500 (as `transformers serve` does without a hub cache) while chat
    works: the deployment stays in routing; a `probe: {path: /health}` deployment probes fine."""
    primary.behave(models_status=500)
    secondary.behave(models_status=500)
    models = {
        "primary": openai_model(primary.openai_url, "p"),
        "health-probed": openai_model(secondary.openai_url, "h", probe={"path": "/health"}),
    }
    settings = settings_for(redis_url, tmp_path / "logs", models, {"default": ["primary"]},
                            resilience={"health": {"probe_interval_seconds": 0.2}})  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # traffic while probes keep failing
            status, headers, _ = http("POST", server.base + "/v1/chat/completions", ask())
            assert status == 200 and headers["x-router-model"] == "primary"
            view = json.loads(http("GET", server.base + "/circuit-breakers")[2])
            health = view["circuit_breakers"]
            if health["primary:0"]["health"]["probe_failures"] >= 3:
                break
        assert health["primary:0"]["health"]["healthy"] is True
        assert health["health-probed:0"]["health"]["last_probe_ok"] is True


# -- hedged requests -----------------------------------------------------------------------------


@pytest.fixture
def hedged(
    redis_url: str, sims_60: tuple[SimProcess, SimProcess], tmp_path: Path
) -> Iterator[GatewayServer]:
    """A chain that hedges after 0.3 s, and the same chain without hedging."""
    primary, secondary = sims_60
    models = {
        "primary": openai_model(primary.openai_url, "primary-upstream"),
        "secondary": openai_model(secondary.openai_url, "secondary-upstream"),
    }
    chains = {
        "hedged": {
            "steps": ["primary", "secondary"],
            "hedge": {"enabled": True, "after_seconds": 0.3},
        },
        "plain": ["primary", "secondary"],
    }
    with defaults_gateway(redis_url, tmp_path, models, chains) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_a_slow_first_token_is_hedged_and_the_first_token_wins(
    closing: ExitStack,
    tmp_path: Path,
    hedged: GatewayServer,
    primary: SimProcess,
    secondary: SimProcess,
    stream: bool,
) -> None:
    """Primary's first token would take 3 s: after 0.3 s the secondary starts too and answers;
    the primary's attempt is cancelled and counted as such."""
    primary.behave(first_token_ms=3000)
    started = time.monotonic()
    raw = client(closing, hedged).chat.completions.with_raw_response.create(
        **ask("hedged"), stream=stream
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert time.monotonic() - started < 2
    assert text == full_text("secondary-upstream")
    assert raw.headers["x-router-fallback"] == "true" and raw.headers["x-router-attempts"] == "2"
    assert primary.stats()["requests"] == 1 and secondary.stats()["requests"] == 1
    metrics = http("GET", hedged.base + "/metrics")[2].decode()
    assert (
        'llm_attempts_total{deployment="primary:0",model="primary",outcome="cancelled"} 1.0'
        in metrics
    )
    # Both attempts reach the ledger: the winner, and the loser as `cancelled`.
    ledger = tmp_path / "ledger.db"

    def attempt_rows() -> list[tuple[str, str]]:
        with sqlite3.connect(ledger) as db:
            query = "SELECT deployment, outcome FROM llm_records WHERE kind = 'attempt'"
            return sorted(db.execute(query).fetchall())

    wait_until(lambda: len(attempt_rows()) == 2, what="attempt rows in the ledger")
    assert attempt_rows() == [("primary:0", "cancelled"), ("secondary:0", "ok")]


def test_a_fast_primary_is_never_hedged(
    closing: ExitStack, hedged: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """Hedging costs nothing while the primary answers before the delay."""
    for _ in range(5):
        client(closing, hedged).chat.completions.create(**ask("hedged"))
    assert primary.stats()["requests"] == 5 and secondary.stats()["requests"] == 0


def test_without_hedging_a_slow_primary_is_waited_for(
    closing: ExitStack, hedged: GatewayServer, primary: SimProcess, secondary: SimProcess
) -> None:
    """Hedging is opt-in: the same slow primary on a chain without it answers, late."""
    primary.behave(first_token_ms=1000)
    started = time.monotonic()
    answer = client(closing, hedged).chat.completions.create(**ask("plain"))
    assert time.monotonic() - started >= 1
    assert answer.choices[0].message.content == full_text("primary-upstream")
    assert secondary.stats()["requests"] == 0


def test_an_answer_larger_than_max_response_bytes_fails_over(
    closing: ExitStack, redis_url: str, sims_60: tuple[SimProcess, SimProcess], tmp_path: Path
) -> None:
    """A runaway upstream (50,000 tokens, ~400 kB) against a 64 kB bound: the read stops at the
    bound, the attempt counts for the breaker, and the secondary answers."""
    primary, secondary = sims_60
    primary.behave(response_tokens=50_000)
    models = {"primary": openai_model(primary.openai_url, "primary-upstream"),
              "secondary": openai_model(secondary.openai_url, "secondary-upstream")}  # fmt: skip
    settings = settings_for(redis_url, tmp_path / "logs", models,
                            {"default": ["primary", "secondary"]},
                            upstream={"max_response_bytes": 65_536})  # fmt: skip
    with GatewayServer(create_app(settings, environ={})) as server:
        answer = client(closing, server).chat.completions.with_raw_response.create(**ask())
        assert answer.status_code == 200 and answer.headers["x-router-model"] == "secondary"
        assert answer.parse().choices[0].message.content == full_text("secondary-upstream")
        view = json.loads(http("GET", server.base + "/circuit-breakers")[2])["circuit_breakers"]
        assert view["primary:0"]["total_failures"] == 1


def rss_kib(pid: int) -> int:
    """A process's resident set, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_fifty_megabyte_answer_costs_the_gateway_bounded_memory(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    """With the shipped bound (10 MiB), a primary streaming ~50 MB of SSE is cut at the bound
    (the log says so) and the secondary answers; `main.py api`'s resident memory grows by a few
    MiB (3 MiB measured), not by the stream's size: chunks are parsed and dropped as they come,
    and the read stops at the bound."""
    primary.behave(response_tokens=350_000)  # about 50 MB of SSE (some 150 bytes an event)
    config = single_model_config(tmp_path, redis_url, primary)
    data = yaml.safe_load(config.read_text())
    data["models"]["secondary"] = openai_model(secondary.openai_url, "s")
    data["chains"] = {"default": ["primary", "secondary"]}
    data["sessions"] = {"default_selector": "default"}
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    proc = api_process(config, {}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(base + "/readyz"), timeout=60, what="api")
        warm = {"model": "secondary", "messages": [{"role": "user", "content": "hi"}]}
        assert http("POST", base + "/v1/chat/completions", warm)[0] == 200
        before = rss_kib(proc.pid)
        turn = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        status, headers, _ = http("POST", base + "/v1/chat/completions", turn, timeout=120)
        growth_mib = (rss_kib(proc.pid) - before) / 1024
    finally:
        proc.terminate()
        proc.wait(30)
    assert status == 200 and headers["x-router-model"] == "secondary"
    log = (tmp_path / "logs" / "api_server.log").read_text()
    assert "answer larger than 10485760 bytes" in log, "cut at the bound, not failed otherwise"
    assert growth_mib < 30, f"RSS grew by {growth_mib:.1f} MiB"
