"""Where a gateway worker's time goes under load: py-spy samples bucketed by layer.

    .venv/bin/python bench/profile.py [--duration 20] [--concurrency 50] [--upstream sse]

The setup of bench/run.py (private redis-server, nginx answering a canned completion, one
`main.py api` worker, wrk posting `/chat_completions` of a pinned session) with py-spy sampling
the worker (`py-spy record --format raw --gil`, 250 Hz: only samples where a thread holds the GIL,
which is where Python's CPU time goes) while wrk runs.
Each sample is put in one bucket by its innermost frame that belongs to a known layer: time in
orjson called from our code counts as JSON, time in our middleware's own lines as middleware.
Prints the buckets as a Markdown table, most first (bench/RESULTS.md keeps the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import (  # noqa: E402
    WRK_SCRIPT,
    ensure_tools,
    start_gateway,
    start_nginx,
    stop_all,
    write_config,
)

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402

# (bucket, pattern on "function (file)"), tried innermost frame first; the first layer a frame
# belongs to takes the sample.
LAYERS = [
    ("Redis (redis-py, hiredis)", r"\((redis|hiredis)/"),
    ("upstream client (aiohttp)", r"\((aiohttp|yarl|multidict|aiohappyeyeballs)/"),
    ("JSON (orjson, json)", r"orjson|\(json/"),
    ("validation (pydantic)", r"\((pydantic|pydantic_core)/"),
    ("access line and logs", r"services/platform/logs\.py|\(loguru/"),
    ("ledger (WAL append, database writes)", r"services/ledger/|\((aiosqlite|sqlalchemy)/"),
    ("metrics (prometheus_client)", r"\(prometheus_client/|services/platform/metrics\.py"),
    ("auth, limits, guards", r"services/api/(auth|rate_limit|http_guard|input_limits)\.py"),
    ("request middleware", r"services/api/middleware\.py"),
    ("chat handler and SSE relay", r"services/api/(chat|streaming|schemas|responses)\.py"),
    ("routing (plan, walk, breakers, turn)", r"services/(routing|resilience|capacity)/"),
    ("adapters (providers)", r"services/providers/"),
    ("ASGI framework (starlette, fastapi)", r"\((starlette|fastapi)/"),
    ("HTTP server (uvicorn, httptools)", r"\((uvicorn|httptools)/"),
    ("event loop (uvloop, asyncio)", r"\((uvloop|asyncio)/"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in LAYERS]


def bucket(stack: str) -> str:
    """The layer of the innermost frame that has one."""
    for frame in reversed(stack.split(";")):
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return "other (interpreter, GC, stdlib)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--upstream", choices=["json", "sse"], default="sse")
    args = parser.parse_args()
    ensure_tools()
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        sys.exit("py-spy is not installed (scripts/bootstrap --dev installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="fr-profile-"))
    redis = start_redis_server()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port, api_port = free_port(), free_port()
        procs.append(start_nginx(workdir, upstream_port, sse=args.upstream == "sse"))
        config = write_config(workdir, upstream_port, api_port,
                              f"http://127.0.0.1:{upstream_port}/v1", "healthy")  # fmt: skip
        api, writer, base, session_id = start_gateway(workdir, redis.url, config, api_port, 1,
                                                      ledger=True)  # fmt: skip
        procs.extend([writer, api] if writer else [api])
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        body = json.dumps({"session_id": session_id, "message": "Hello!"})
        wrk_env = {**os.environ, "BENCH_BODY": body}
        warm = ["wrk", "-t2", "-c10", "-d2s", "-s", str(script), base + "/chat_completions"]
        subprocess.run(warm, env=wrk_env, capture_output=True, check=True)
        load = subprocess.Popen(
            ["wrk", "-t2", f"-c{args.concurrency}", f"-d{args.duration + 4}s", "-s", str(script),
             base + "/chat_completions"], env=wrk_env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        raw = Path(os.environ.get("FR_PROFILE_RAW") or workdir / "profile.txt")
        subprocess.run([py_spy, "record", "--pid", str(api.pid), "--duration", str(args.duration),
                        "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking",
                        "--gil"],
                       check=True, capture_output=True)  # fmt: skip
        load.wait()
        counts: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack:
                counts[bucket(stack)] += int(n)
        total = sum(counts.values())
        print(f"py-spy, {args.duration}s at concurrency {args.concurrency}, upstream "
              f"{args.upstream}: {total} samples holding the GIL in the worker")  # fmt: skip
        print("| layer | share of samples |\n|---|---|")
        for name, n in counts.most_common():
            print(f"| {name} | {100 * n / total:.1f} % |")
    finally:
        stop_all(procs, redis, workdir)


if __name__ == "__main__":
    main()
