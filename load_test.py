"""Load test a running gateway: `python load_test.py --requests 1000 --concurrency 50`.

Sends chat turns through a session (`/initiate_call`, then `/chat_completions`) or the OpenAI
route (`--openai`, `/v1/chat/completions`), with a progress bar, then prints the success rate,
latency percentiles, throughput, who answered (X-Router-Model) and how often the gateway had to
fall back (X-Router-Fallback, X-Router-Attempts). `--json` prints the summary as JSON instead.
Exits 1 when the success rate is under `--min-success` (default 0: report only).

The key comes from `--api-key` or FR_LOAD_TEST_KEY (sent as `Authorization: Bearer`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Result:
    status: int  # 0: no HTTP answer (connection error, timeout)
    seconds: float
    model: str = ""
    fallback: str = ""
    attempts: int = 0
    error: str = ""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(results: list[Result], wall_seconds: float) -> dict[str, Any]:
    """The numbers the report prints (pure, tested)."""
    ok = [r for r in results if r.status == 200]
    latencies = sorted(r.seconds * 1000 for r in ok)
    return {
        "requests": len(results),
        "succeeded": len(ok),
        "success_rate": round(len(ok) / len(results), 4) if results else 0.0,
        "requests_per_second": round(len(results) / wall_seconds, 1) if wall_seconds else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p90": round(percentile(latencies, 90), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else 0.0,
            "mean": round(statistics.fmean(latencies), 1) if latencies else 0.0,
        },
        "status_codes": dict(sorted(Counter(str(r.status) for r in results).items())),
        "served_by": dict(Counter(r.model or "-" for r in ok).most_common()),
        "fallbacks": {
            "answered_after_fallback": sum(r.fallback == "true" for r in ok),
            "from_cache": sum(r.fallback == "cache" for r in ok),
            "degraded": sum(r.fallback == "degraded" for r in ok),
            "retried_or_failed_over": sum(r.attempts > 1 for r in ok),
        },
        "errors": dict(Counter(r.error for r in results if r.error).most_common(5)),
    }


async def one_turn(
    http: aiohttp.ClientSession, args: argparse.Namespace, session_id: str | None
) -> Result:
    started = time.perf_counter()
    if args.openai:
        url = args.url + "/v1/chat/completions"
        messages = [{"role": "user", "content": args.message}]
        body: dict[str, Any] = {"model": args.model, "messages": messages}
    else:
        url = args.url + "/chat_completions"
        body = {"session_id": session_id, "message": args.message}
    try:
        async with http.post(url, json=body) as resp:
            text = await resp.read()
            error = ""
            if resp.status != 200:
                try:
                    error = json.loads(text)["error"]["code"] or str(resp.status)
                except (ValueError, KeyError, TypeError):
                    error = str(resp.status)
            return Result(
                resp.status,
                time.perf_counter() - started,
                resp.headers.get("X-Router-Model", ""),
                resp.headers.get("X-Router-Fallback", ""),
                int(resp.headers.get("X-Router-Attempts", "0") or 0),
                error,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(0, time.perf_counter() - started, error=type(exc).__name__)


async def run(args: argparse.Namespace, progress: Progress | None) -> tuple[list[Result], float]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    results: list[Result] = []
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        try:  # one clear line, not a traceback nor a table of 1,000 errors, when nobody answers
            async with http.get(args.url + "/livez", timeout=aiohttp.ClientTimeout(total=5)):
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SystemExit(f"cannot reach the gateway at {args.url}: "
                             f"{type(exc).__name__}: {exc or 'timed out'}") from None  # fmt: skip
        sessions: list[str | None] = [None] * args.concurrency
        if not args.openai:
            for i in range(args.concurrency):  # one session per concurrent client
                async with http.post(args.url + "/initiate_call", json={}) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"/initiate_call answered {resp.status}: "
                                         f"{(await resp.text())[:200]}")  # fmt: skip
                    sessions[i] = (await resp.json())["session_id"]
        task = progress.add_task("requests", total=args.requests) if progress else None
        remaining = iter(range(args.requests))
        started = time.perf_counter()

        async def client(session_id: str | None) -> None:
            for _ in remaining:
                results.append(await one_turn(http, args, session_id))
                if progress is not None and task is not None:
                    progress.advance(task)

        await asyncio.gather(*(client(s) for s in sessions))
        return results, time.perf_counter() - started


def render(summary: dict[str, Any], console: Console) -> None:
    latency = summary["latency_ms"]
    table = Table(title="Fallback Routing load test", show_header=False)
    table.add_row("requests", f"{summary['requests']} at {summary['requests_per_second']}/s")
    table.add_row("success rate", f"{summary['success_rate']:.2%} ({summary['succeeded']} ok)")
    table.add_row("latency ms", "  ".join(f"{k} {v}" for k, v in latency.items()))
    table.add_row(
        "status codes", ", ".join(f"{k}: {v}" for k, v in summary["status_codes"].items())
    )
    table.add_row("served by", ", ".join(f"{k}: {v}" for k, v in summary["served_by"].items()))
    table.add_row("fallbacks", ", ".join(f"{k}: {v}" for k, v in summary["fallbacks"].items()))
    if summary["errors"]:
        table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in summary["errors"].items()))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--openai", action="store_true", help="use /v1/chat/completions")
    parser.add_argument("--model", default="default", help="model or chain (with --openai)")
    parser.add_argument("--message", default="Hello! How are you?")
    parser.add_argument("--api-key", default=os.environ.get("FR_LOAD_TEST_KEY"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--min-success", type=float, default=0.0, help="exit 1 under this rate")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    args.url = args.url.rstrip("/")
    args.concurrency = min(args.concurrency, args.requests)
    console = Console(stderr=args.json)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=args.json) as progress:
        results, wall = asyncio.run(run(args, progress))
    summary = summarize(results, wall)
    if args.json:
        print(json.dumps(summary))
    else:
        render(summary, console)
    return 0 if summary["success_rate"] >= args.min_success else 1


if __name__ == "__main__":
    sys.exit(main())
