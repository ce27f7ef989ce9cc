"""Streams relayed: chunks per second for N concurrent streams of T tokens, and time to first
token, direct to the upstream and through one gateway worker, in one run.

    .venv/bin/python bench/streaming.py [--streams 50] [--tokens 500] [--rounds 3]

nginx answers every POST with the same SSE stream of `--tokens` content chunks (plus the role
chunk, the finish chunk, a usage chunk and `[DONE]`), all at once: the upstream is never the
bottleneck, so what is measured is the relay. Each round opens `--streams` streamed
`/v1/chat/completions` at once with aiohttp, first straight to nginx, then through the gateway
(`main.py api`, one worker, ledger on), and counts the content chunks each client received,
the wall time of the whole round and each stream's time to its first content chunk. Prints the
median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import ensure_tools, start_gateway, start_nginx, stop_all, write_config  # noqa: E402

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402


def sse_body(tokens: int) -> str:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "bench-upstream"}  # fmt: skip
    parts = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    parts += [{"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]} for i in range(tokens)]
    parts.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    parts.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": tokens,
                                           "total_tokens": tokens + 9}})  # fmt: skip
    return "".join(f"data: {json.dumps({**head, **p})}\n\n" for p in parts) + "data: [DONE]\n\n"


async def one_stream(http: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """(content chunks received, seconds to the first one)."""
    body = {"model": "bench-chain", "stream": True,
            "messages": [{"role": "user", "content": "Hello!"}]}  # fmt: skip
    started, first, chunks = time.perf_counter(), None, 0
    async with http.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
    return chunks, first if first is not None else float("nan")


async def round_of(url: str, streams: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(one_stream(http, url) for _ in range(min(streams, 5))))  # warm
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(http, url) for _ in range(streams)))
        elapsed = time.perf_counter() - started
    chunks = sum(c for c, _ in results)
    ttfts = sorted(t for _, t in results)
    return {
        "chunks": chunks,
        "chunks_per_s": chunks / elapsed,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_max_ms": 1000 * ttfts[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-streaming-"))
    redis = start_redis_server()
    procs = []
    try:
        upstream_port, api_port = free_port(), free_port()
        procs.append(start_nginx(workdir, upstream_port, stream=sse_body(args.tokens)))
        direct = f"http://127.0.0.1:{upstream_port}/v1"
        config = write_config(workdir, upstream_port, api_port, direct, "healthy")
        api, writer, base, _ = start_gateway(workdir, redis.url, config, api_port, 1, ledger=True)
        procs.extend([writer, api] if writer else [api])
        rows: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
        for _ in range(args.rounds):  # interleaved
            rows["direct"].append(asyncio.run(round_of(direct + "/chat/completions",
                                                       args.streams)))  # fmt: skip
            rows["gateway"].append(asyncio.run(round_of(base + "/v1/chat/completions",
                                                        args.streams)))  # fmt: skip
        expected = args.streams * args.tokens
        print(f"{args.streams} concurrent streams of {args.tokens} tokens, one gateway worker, "
              f"median of {args.rounds} interleaved rounds")  # fmt: skip
        print("| path | content chunks received | chunks/s | TTFT p50 ms | TTFT max ms |")
        print("|---|---|---|---|---|")
        median = {path: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                  for path, runs in rows.items()}  # fmt: skip
        for path, m in median.items():
            print(f"| {path} | {m['chunks']:.0f} of {expected} | {m['chunks_per_s']:,.0f} | "
                  f"{m['ttft_p50_ms']:.1f} | {m['ttft_max_ms']:.1f} |")  # fmt: skip
        added = median["gateway"]["ttft_p50_ms"] - median["direct"]["ttft_p50_ms"]
        print(f"added time to first token (p50): {added:.1f} ms")
    finally:
        stop_all(procs, redis, workdir)


if __name__ == "__main__":
    main()
