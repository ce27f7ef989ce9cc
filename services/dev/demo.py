"""`main.py demo`: scripted traffic with injected provider failures, through the real pipeline.

Everything runs in this one process, on real sockets: a private Redis, two simulated model
servers (`primary`, `secondary`), and the gateway app on uvicorn. Phases of traffic go through
`POST /v1/chat/completions` while faults are injected into the simulators; for each phase the
demo reports who answered (primary, secondary, cache, degraded), client-visible errors and
latency, then the gateway's own statistics and breaker states.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvicorn
from aiohttp import web

from services.app import create_app
from services.config import Settings, Simulation
from services.dev.simulator import SimulatedModelServer
from services.platform.redis_connection import free_port, start_private_redis

SIM = Simulation(latency_ms=20, tokens_per_second=2000, response_tokens=12)


@dataclass
class PhaseResult:
    """What the clients saw during one phase."""

    name: str
    requests: int = 0
    served: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The phase as one summary row."""
        ordered = sorted(self.latencies_ms) or [0.0]
        return {
            "phase": self.name,
            "requests": self.requests,
            **{k: self.served[k] for k in ("primary", "secondary", "cache", "degraded")},
            "errors": self.errors,
            "p50_ms": round(statistics.median(ordered), 1),
            "max_ms": round(ordered[-1], 1),
        }


def demo_settings(redis_url: str, ports: tuple[int, int], log_dir: str, data_dir: str) -> Settings:
    """A two-model chain with short breaker waits, so recovery fits in a demo."""

    def model(port: int, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}/v1"
        # Short first-token and stall deadlines (the defaults are 10 s) so hangs fit in a demo;
        # both simulators continue a prefill, so broken streams are continued by the other.
        return {"deployments": [{"provider": "simulated", "base_url": url, "model": name,
                                 "ttft_seconds": 1.0, "stall_seconds": 1.0}]}  # fmt: skip

    return Settings.model_validate(
        {
            "redis": {"url": redis_url},
            "log": {"dir": log_dir, "requests": False},
            "database": {"url": f"sqlite+aiosqlite:///{data_dir}/demo.db"},
            "ledger": {"wal_dir": f"{data_dir}/wal", "flush_interval_seconds": 0.2},
            "models": {
                "primary": model(ports[0], "primary"),
                "secondary": model(ports[1], "secondary"),
            },
            "chains": {"demo": ["primary", "secondary", "cache", "degraded"]},
            "sessions": {"default_selector": "demo"},
            "resilience": {
                "deadline_seconds": 5,
                "breaker": {"open_seconds": 1, "max_open_seconds": 4},
                "health": {"enabled": False},
            },
        }
    )


async def _serve_simulator(server: SimulatedModelServer, port: int) -> web.AppRunner:
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def complete_stream(raw: bytes) -> bool:
    """Whether an SSE answer is whole: every word of the simulator's answer, then [DONE]."""
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        return False
    text = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for event in events[:-1]
        for choice in orjson.loads(event).get("choices") or ()
    )
    return len(text.split()) == SIM.response_tokens


async def _phase(
    http: aiohttp.ClientSession,
    base: str,
    name: str,
    prompts: list[str],
    concurrency: int,
    stream: bool = False,
) -> PhaseResult:
    result = PhaseResult(name)
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> None:
        body = {"model": "demo", "messages": [{"role": "user", "content": prompt}],
                "stream": stream}  # fmt: skip
        async with gate:
            started = time.perf_counter()
            async with http.post(base + "/v1/chat/completions", json=body) as resp:
                raw = await resp.read()
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.requests += 1
                if resp.status != 200 or (stream and not complete_stream(raw)):
                    result.errors += 1  # a streamed answer must be whole, not just started
                    return
                tier = resp.headers.get("X-Router-Fallback", "")
                model = resp.headers.get("X-Router-Model", "")
                result.served[tier if tier in {"cache", "degraded"} else model] += 1

    await asyncio.gather(*(one(p) for p in prompts))
    return result


async def _run_phases(
    http: aiohttp.ClientSession,
    base: str,
    primary: SimulatedModelServer,
    secondary: SimulatedModelServer,
    requests: int,
    concurrency: int,
    carried: Counter[tuple[str, str]],
) -> list[PhaseResult]:
    """The demo's phases in order, each with its faults set on the simulated models. A reset
    zeroes a breaker's counters: what they held is added to `carried` first, so that the
    summary counts every trip and failure of the run."""
    known = [f"question {i}" for i in range(requests)]
    fresh = [f"another question {i}" for i in range(requests)]
    phases: list[PhaseResult] = []

    async def phase(name: str, prompts: list[str], stream: bool = False, **faults: Any) -> None:
        # Each fault phase starts from closed breakers, so it shows the trip itself.
        if faults:
            async with http.get(base + "/circuit-breakers") as resp:
                for name_, view in (await resp.json())["circuit_breakers"].items():
                    carried[name_, "trips"] += view["trips"]
                    carried[name_, "total_failures"] += view["total_failures"]
            for name_ in ("primary:0", "secondary:0"):
                async with http.post(f"{base}/circuit-breakers/{name_}/reset") as resp:
                    resp.raise_for_status()
        for sim, changes in (
            (primary, faults.get("primary")),
            (secondary, faults.get("secondary")),
        ):
            sim.restore()
            if changes:
                sim.behaviour = sim.behaviour.updated(changes)
        phases.append(await _phase(http, base, name, prompts, concurrency, stream))

    await phase("healthy", known)
    await phase("primary returns HTTP 500", fresh, primary={"failure_rate": 1.0})
    await phase(
        "primary drops connections",
        fresh,
        primary={"failure_rate": 1.0, "failure_mode": "drop"},
    )
    hang = {"failure_rate": 1.0, "failure_mode": "hang", "hang_seconds": 3}
    await phase("primary hangs (1 s first token)", fresh, primary=hang)
    silent = {"failure_rate": 1.0, "failure_mode": "hang_after_headers",
              "drop_after_events": 0, "hang_seconds": 3}  # fmt: skip
    await phase("primary silent after headers, streamed", fresh, True, primary=silent)
    # Streams that break after their first words reached the client: each is continued
    # on the secondary, so every client still gets the whole answer and [DONE].
    stall = {"failure_rate": 1.0, "failure_mode": "stall_mid_stream",
             "drop_after_events": 5, "hang_seconds": 3}  # fmt: skip
    await phase("primary stalls mid-stream", fresh, True, primary=stall)
    cut = {"failure_rate": 1.0, "failure_mode": "drop_mid_stream", "drop_after_events": 5}
    await phase("primary cuts streams", fresh, True, primary=cut)
    down = {"failure_rate": 1.0, "failure_status": 503}
    # Half asked before (the cache has them), half never asked (only `degraded` can answer).
    unseen = [f"a question nobody asked {i}" for i in range(requests)]
    mixed = [p for pair in zip(known, unseen, strict=True) for p in pair][:requests]
    await phase("every model down", mixed, primary=down, secondary=down)
    # Recovery is the breakers' own: wait out the open state, then probes close it.
    async with http.get(base + "/circuit-breakers") as resp:
        view = (await resp.json())["circuit_breakers"]
    await asyncio.sleep(max((b["retry_in_seconds"] or 0) for b in view.values()) + 0.1)
    await phase("recovered", fresh)
    return phases


async def run_demo(requests: int, concurrency: int, log_dir: str) -> dict[str, Any]:
    """Run every phase; answer the per-phase rows, the gateway's statistics and breakers."""
    redis = start_private_redis()
    ports = (free_port(), free_port())
    primary, secondary = (
        SimulatedModelServer("primary", SIM),
        SimulatedModelServer("secondary", SIM),
    )
    runners = [
        await _serve_simulator(primary, ports[0]),
        await _serve_simulator(secondary, ports[1]),
    ]
    api_port = free_port()
    data_dir = tempfile.mkdtemp(prefix="fr-demo-")
    app = create_app(demo_settings(redis.url, ports, log_dir, data_dir), environ={})
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=api_port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{api_port}"
    try:
        # uvicorn offers a flag, not an event, for "listening"
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http:
            carried: Counter[tuple[str, str]] = Counter()
            phases = await _run_phases(
                http, base, primary, secondary, requests, concurrency, carried
            )
            async with http.get(base + "/api/admin/fallback/statistics") as resp:
                stats = await resp.json()
            async with http.get(base + "/circuit-breakers") as resp:
                breakers = (await resp.json())["circuit_breakers"]
        return {
            "phases": [p.row() for p in phases],
            "statistics": stats,
            "breakers": {
                n: {
                    "state": b["state"],
                    "trips": b["trips"] + carried[n, "trips"],
                    "total_failures": b["total_failures"] + carried[n, "total_failures"],
                }
                for n, b in breakers.items()
            },
            "upstream_calls": {"primary": primary.requests, "secondary": secondary.requests},
        }
    finally:
        server.should_exit = True
        await serving
        for runner in runners:
            await runner.cleanup()
        redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def render(summary: dict[str, Any]) -> str:
    """The summary as a plain-text report."""
    widths = {"phase": -40, "requests": 9, "primary": 9, "secondary": 10, "cache": 7,
              "degraded": 9, "errors": 8, "p50_ms": 8, "max_ms": 8}  # fmt: skip

    def line(values: dict[str, Any]) -> str:
        return "".join(f"{values[k]!s:{'<' if w < 0 else '>'}{abs(w)}}" for k, w in widths.items())

    lines = [
        "Fallback Routing demo: real gateway, real simulated upstreams, injected faults",
        "",
        line({k: k.replace("_ms", " ms") for k in widths}),
        *(line(row) for row in summary["phases"]),
    ]
    s = summary["statistics"]
    lines += [
        "",
        f"gateway statistics: {s['total_requests']} requests, {s['total_attempts']} upstream "
        f"attempts, {s['total_retries']} retries, tiers {s['tiers']}",
        f"upstream calls received: {summary['upstream_calls']}",
        "breakers: "
        + ", ".join(
            f"{n} {b['state']} ({b['trips']} trips, {b['total_failures']} failures)"
            for n, b in summary["breakers"].items()
        ),
    ]
    return "\n".join(lines)
