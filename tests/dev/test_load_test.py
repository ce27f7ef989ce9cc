"""load_test.py against a real gateway: counts, latency, who answered, fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys

from load_test import Result, percentile, summarize
from services.config import ROOT
from services.platform.redis_connection import free_port
from tests.helpers import GatewayServer, SimProcess


def run_load_test(base: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "load_test.py"), "--url", base, "--json", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_healthy_run_reports_every_request(gateway: GatewayServer) -> None:
    summary = run_load_test(gateway.base, "--requests", "40", "--concurrency", "5")
    assert summary["requests"] == 40 and summary["succeeded"] == 40
    assert summary["success_rate"] == 1.0 and summary["served_by"] == {"primary": 40}
    assert summary["status_codes"] == {"200": 40}
    latency = summary["latency_ms"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"] <= latency["max"]


def test_fallbacks_are_counted_and_min_success_sets_the_exit_code(
    gateway: GatewayServer, primary: SimProcess
) -> None:
    primary.behave(failure_rate=1.0, failure_status=503)
    summary = run_load_test(gateway.base, "--openai", "--model", "bare", "--requests", "20",
                            "--concurrency", "4")  # fmt: skip
    assert summary["served_by"] == {"secondary": 20}
    assert summary["fallbacks"] == {
        "answered_after_fallback": 20,
        "from_cache": 0,
        "degraded": 0,
        "retried_or_failed_over": summary["fallbacks"]["retried_or_failed_over"],
    }  # type: ignore[index]
    primary.behave(failure_rate=0.0)
    failing = subprocess.run(
        [sys.executable, str(ROOT / "load_test.py"), "--url", gateway.base, "--json", "--openai",
         "--model", "no-such-model", "--requests", "5", "--min-success", "0.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failing.returncode == 1
    assert json.loads(failing.stdout)["errors"] == {"model_not_found": 5}


def test_summary_percentiles() -> None:
    results = [Result(200, ms / 1000, "m", "false", 1) for ms in range(1, 101)]
    results += [Result(0, 5.0, error="ClientConnectorError")]
    summary = summarize(results, wall_seconds=2.0)
    assert summary["success_rate"] == round(100 / 101, 4)
    assert summary["latency_ms"]["p50"] == 50.0 and summary["latency_ms"]["p99"] == 99.0
    assert summary["requests_per_second"] == 50.5
    assert summary["errors"] == {"ClientConnectorError": 1}
    assert percentile([], 50) == 0.0


def test_a_gateway_that_is_down_gets_one_clear_line() -> None:
    """Nobody listening: exit 1 with one line that says so, no traceback and no table."""
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "load_test.py"), "--url", url, "--requests", "5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1
    assert lines == [lines[0]] and lines[0].startswith(f"cannot reach the gateway at {url}")
