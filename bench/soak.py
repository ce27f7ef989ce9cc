"""Soak: one gateway worker under wrk at concurrency 50 for ten minutes, its RSS sampled every
10 s, to show whether memory levels off after warm-up or keeps growing.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 50] [--interval 10]

The same set-up as bench/run.py (nginx canned SSE upstream, private redis-server, `main.py api`
with the ledger on SQLite and `main.py ledger` inserting its WAL, or with `--writer inline` the
API inserting it; the schema migrated before the gateway starts). Prints the API worker's RSS
curve, then the growth from the end of the warm-up (the first fifth of the run) to the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import (  # noqa: E402
    WRK_SCRIPT,
    ensure_tools,
    rss_mb,
    start_gateway,
    start_nginx,
    stop_all,
    write_config,
)

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10, help="seconds between RSS samples")
    parser.add_argument(
        "--writer",
        choices=["external", "inline"],
        default="external",
        help="who inserts the ledger's rows: a `main.py ledger` process (as under `main.py all`) "
        "or the API process itself; the RSS sampled is the API worker's",
    )
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-soak-"))
    redis = start_redis_server()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port, api_port = free_port(), free_port()
        procs.append(start_nginx(workdir, upstream_port, sse=True))
        config = write_config(workdir, upstream_port, api_port,
                              f"http://127.0.0.1:{upstream_port}/v1", "healthy")  # fmt: skip
        api, writer, base, session_id = start_gateway(
            workdir, redis.url, config, api_port, 1, ledger=True, writer=args.writer
        )
        procs.extend([writer, api] if writer else [api])
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        seconds = int(args.minutes * 60)
        body = json.dumps({"session_id": session_id, "message": "Hello!"})
        load = subprocess.Popen(
            ["wrk", "-t2", f"-c{args.concurrency}", f"-d{seconds}s", "--timeout", "5s",
             "-s", str(script), base + "/chat_completions"],
            env={"BENCH_BODY": body, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        start = time.monotonic()
        samples: list[tuple[float, float, str]] = [(0.0, rss_mb(api.pid), "-")]
        while load.poll() is None:
            time.sleep(args.interval)  # a benchmark's sampling period, not a test waiting
            samples.append((time.monotonic() - start, rss_mb(api.pid), ledger_buffer(base)))
        out = load.communicate()[0]
        stats = json.loads(next(r for r in out.splitlines() if r.startswith("BENCH "))[6:])
        errors = stats["errors"] + stats["non2xx"]
        print(f"one worker, concurrency {args.concurrency}, {seconds} s: "
              f"{stats['requests']:.0f} requests, {errors:.0f} errors")  # fmt: skip
        print("| seconds | RSS MB | ledger records buffered, last flush ms |")
        print("|---|---|---|")
        for at, rss, ledger in samples:
            print(f"| {at:.0f} | {rss:.1f} | {ledger} |")
        warm = next(rss for at, rss, _ in samples if at >= seconds / 5)
        print(f"RSS after warm-up (t ≥ {seconds / 5:.0f} s): {warm:.1f} MB; at the end: "
              f"{samples[-1][1]:.1f} MB; growth {samples[-1][1] - warm:+.1f} MB; "
              f"max {max(r for _, r, _ in samples):.1f} MB")  # fmt: skip
    finally:
        stop_all(procs, redis, workdir)


def ledger_buffer(base: str) -> str:
    """The API's ledger backlog (/api/metrics): a writer that falls behind shows here first."""
    try:
        with urllib.request.urlopen(base + "/api/metrics", timeout=5) as resp:
            data = json.load(resp)
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"
    return f"{data['buffer_len']}, {data['last_flush_ms']}"


if __name__ == "__main__":
    main()
