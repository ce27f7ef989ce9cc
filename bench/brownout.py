"""Brownout benchmark: what clients see while the primary misbehaves without failing cleanly.

    .venv/bin/python bench/brownout.py [--duration 20] [--concurrency 10]

Each scenario starts everything afresh (breakers cold): a private redis-server, nginx as the
healthy fallback (a canned SSE answer), one simulated model server as the primary, and the
gateway (one worker, shipped defaults) whose session chain is [primary, nginx]. A client drives
`/chat_completions` for `--duration` seconds from `--concurrency` aiohttp clients that each
send their next request when the last one is answered, recording every latency (wrk's own
percentiles came out impossible here: a p90 of 3.6 s over 458 requests in 8 s on 10
connections). Scenarios:

- `hang`: the primary accepts every request and never answers;
- `tail`: the primary is fast, but 5 % of its answers start 5 s late (a heavy tail);
- `tail-hedged`: the same primary, on a chain that hedges after 0.5 s.

Printed per scenario: requests, errors, p50/p90/p99 latency, and upstream attempts per request
(every attempt the gateway made, cancelled hedges included, from its /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import ensure_tools, start_nginx, stop_all, wait_http  # noqa: E402

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402

SCENARIOS: dict[str, dict[str, Any]] = {
    "hang": {"behaviour": {"failure_rate": 1.0, "failure_mode": "hang", "hang_seconds": 600}},
    "tail": {"behaviour": {"slow_rate": 0.05, "slow_ms": 5000}},
    "tail-hedged": {
        "behaviour": {"slow_rate": 0.05, "slow_ms": 5000},
        "hedge": {"enabled": True, "after_seconds": 0.5},
    },
}


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


async def drive(
    url: str, body: dict[str, Any], concurrency: int, duration: float
) -> dict[str, Any]:
    """Closed-loop load: each client sends its next request when the last is answered."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            started = time.monotonic()
            async with http.post(url, json=body) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append(time.monotonic() - started)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p90, p99 = (cuts[i] * 1000 for i in (49, 89, 98))
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max(latencies) * 1000,
        "over_1s": sum(latency > 1 for latency in latencies),
    }


def attempts_per_request(base: str) -> float:
    """Upstream attempts over requests answered, from the gateway's own counters."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    attempts = requests = 0.0
    for line in text.splitlines():
        if line.startswith("llm_attempts_total{"):
            attempts += float(line.rsplit(" ", 1)[1])
        elif line.startswith("fallback_chain_tier_usage_total{"):
            requests += float(line.rsplit(" ", 1)[1])
    return attempts / requests if requests else 0.0


def run_scenario(name: str, duration: int, concurrency: int) -> dict[str, Any]:
    """One scenario on fresh processes; its wrk summary plus attempts per request."""
    spec = SCENARIOS[name]
    workdir = Path(tempfile.mkdtemp(prefix="fr-brownout-"))
    redis = start_redis_server()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nginx_port, sim_port, api_port = free_port(), free_port(), free_port()
        procs.append(start_nginx(workdir, nginx_port, sse=True))
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "simulate", "--port", str(sim_port),
             "--model-name", "primary", "--latency-ms", "20", "--tokens-per-second", "2000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        post(f"http://127.0.0.1:{sim_port}/_sim/behaviour", spec["behaviour"])
        chain: dict[str, Any] = {"steps": ["primary", "fallback"]}
        if "hedge" in spec:
            chain["hedge"] = spec["hedge"]
        config = {
            "api": {"host": "127.0.0.1", "port": api_port},
            "log": {"dir": str(workdir / "logs")},
            "sessions": {"default_selector": "chain"},
            "models": {
                "primary": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "probe": False,
                            "base_url": f"http://127.0.0.1:{sim_port}/v1",
                            "model": "p",
                        }
                    ]
                },
                "fallback": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "probe": False,
                            "base_url": f"http://127.0.0.1:{nginx_port}/v1",
                            "model": "f",
                        }
                    ]
                },
            },
            "chains": {"chain": chain},
        }
        path = workdir / "brownout.yaml"
        path.write_text(json.dumps(config))
        env = {
            "PATH": "/usr/bin:/bin",
            "FR_CONFIG": str(path),
            "FR_REDIS_URL": redis.url,
            "FR_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'ledger.db'}",
            "FR_LEDGER_WAL_DIR": str(workdir / "wal"),
        }
        api = [sys.executable, str(ROOT / "main.py"), "api"]
        procs.append(
            subprocess.Popen(api, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        base = f"http://127.0.0.1:{api_port}"
        wait_http(base + "/livez")
        session = post(base + "/initiate_call", {})["session_id"]
        body = {"session_id": session, "message": "Hello!"}
        data = asyncio.run(drive(base + "/chat_completions", body, concurrency, duration))
        data["attempts_per_request"] = attempts_per_request(base)
        with urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/_sim/stats") as resp:
            data["primary_requests"] = json.load(resp)["requests"]
        return data
    finally:
        stop_all(procs, redis, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per scenario")
    parser.add_argument("--concurrency", type=int, default=10, help="wrk connections")
    parser.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    args = parser.parse_args()
    ensure_tools()
    print(f"brownout: {args.duration}s at concurrency {args.concurrency}, shipped defaults")
    print("| scenario | requests | errors | p50 ms | p90 ms | p99 ms | max ms | over 1 s "
          "| attempts/request |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.scenario:
        r = run_scenario(name, args.duration, args.concurrency)
        print(
            f"| {name} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} "
            f"| {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | {r['over_1s']} "
            f"| {r['attempts_per_request']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
