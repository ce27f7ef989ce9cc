"""Ledger on versus off, measured side by side: two gateways, runs interleaved.

    .venv/bin/python bench/ledger_compare.py [--duration 5] [--repeats 5] [--concurrency 50]
                                             [--writer inline|external]

Starts nginx (the canned upstream), a private redis-server and TWO gateways with one worker each,
identical but for `ledger.enabled`, then alternates wrk runs between them so that drift on a
shared VM hits both alike. Prints the median requests/s of each and their ratio (the issue's
target: ledger on >= 90 % of off), plus worker CPU per request. With `--writer external` the
ledger-on gateway only appends and seals WAL files and a `main.py ledger` process inserts them;
the writer's CPU per request is reported too, and its backlog at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    ROOT,
    WRK_SCRIPT,
    cpu_seconds,
    ensure_tools,
    start_nginx,
    stop_all,
    wait_http,
    write_config,
    wrk,
)

from services.platform.redis_connection import free_port, start_redis_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--writer", choices=("inline", "external"), default="inline")
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-ledger-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis = start_redis_server()
    try:
        upstream = free_port()
        procs.append(start_nginx(workdir, upstream))
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        gateways: dict[str, tuple[str, str, int]] = {}
        writer: subprocess.Popen[bytes] | None = None
        for label, enabled in (("ledger on", "true"), ("ledger off", "false")):
            port = free_port()
            home = workdir / label.replace(" ", "-")
            home.mkdir()
            config = write_config(
                home, upstream, port, f"http://127.0.0.1:{upstream}/v1", "healthy"
            )
            env = {**os.environ, "FR_REDIS_URL": redis.url, "FR_CONFIG": str(config),
                   "FR_LEDGER_ENABLED": enabled, "FR_LEDGER_WRITER": args.writer,
                   "FR_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'ledger.db'}",
                   "FR_LEDGER_WAL_DIR": str(home / "wal")}  # fmt: skip
            argv = [sys.executable, str(ROOT / "main.py"), "api"]
            api = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(api)
            if enabled == "true" and args.writer == "external":
                quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                writer = subprocess.Popen([*argv[:-1], "ledger"], env=env, **quiet)
                procs.append(writer)
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/livez")
            req = urllib.request.Request(base + "/initiate_call", data=b"{}", method="POST")
            with urllib.request.urlopen(req) as resp:
                session = json.load(resp)["session_id"]
            body = json.dumps({"session_id": session, "message": "Hello!"})
            wrk(base + "/chat_completions", body, 10, 2, script)  # warm up
            gateways[label] = (base, body, api.pid)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in gateways}
        for _ in range(args.repeats):
            for label, (base, body, pid) in gateways.items():
                before, writer_before = cpu_seconds(pid), cpu_seconds(writer.pid) if writer else 0
                run = wrk(base + "/chat_completions", body, args.concurrency, args.duration, script)
                run["cpu_us"] = (cpu_seconds(pid) - before) / run["requests"] * 1e6
                if writer is not None and label == "ledger on":
                    spent = cpu_seconds(writer.pid) - writer_before
                    run["writer_cpu_us"] = spent / run["requests"] * 1e6
                runs[label].append(run)
        print(f"median of {args.repeats} interleaved runs of {args.duration}s at concurrency "
              f"{args.concurrency}; one worker each; {os.cpu_count()} cores")  # fmt: skip
        print("| gateway | requests/s (median) | runs | worker CPU µs/request | errors |")
        print("|---|---|---|---|---|")
        medians = {}
        for label, rs in runs.items():
            medians[label] = statistics.median(r["rps"] for r in rs)
            cpu = statistics.median(r["cpu_us"] for r in rs)
            each = ", ".join(f"{r['rps']:.0f}" for r in rs)
            errors = sum(r["errors"] + r["non2xx"] for r in rs)
            print(f"| {label} | {medians[label]:.0f} | {each} | {cpu:.0f} | {errors:.0f} |")
        print(f"ledger on / off: {medians['ledger on'] / medians['ledger off']:.1%}")
        if writer is not None:
            cpu = statistics.median(r["writer_cpu_us"] for r in runs["ledger on"] if r["requests"])
            backlog = sum(f.stat().st_size for f in (workdir / "ledger-on" / "wal").glob("wal-*"))
            print(f"external writer: {cpu:.0f} µs CPU per request; WAL backlog at the end: "
                  f"{backlog} bytes")  # fmt: skip
    finally:
        stop_all(procs, redis, workdir)


if __name__ == "__main__":
    main()
