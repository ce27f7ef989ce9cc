"""Gateway benchmark: canned nginx upstream vs. the gateway in front of it, measured with wrk.

    .venv/bin/python bench/run.py [--duration 10] [--scenario healthy]

Starts (all on loopback, all stopped at the end): nginx answering a fixed chat completion, a
private redis-server, the gateway with ONE uvicorn worker pointing at nginx, and wrk. Prints
requests/s and p50/p99 latency at concurrency 1 and 50, direct to nginx and through the gateway
with a session pinned in Redis, the p50 added latency, and the worker's RSS. Needs nginx and wrk
(Debian: nginx-light, wrk); run as root it installs them with apt-get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peers import start_litellm  # noqa: E402

from services.ledger.db import make_engine, migrate  # noqa: E402
from services.platform.redis_connection import (  # noqa: E402
    EmbeddedRedis,
    free_port,
    start_redis_server,
)

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-upstream",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from nginx."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
)
# The same answer as an OpenAI stream: what the gateway reads from every upstream (it streams even
# for a non-streamed client, so that a silent upstream is noticed; docs/resilience.md).
_CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
          "model": "bench-upstream"}  # fmt: skip
STREAM = (
    "".join(
        "data: " + json.dumps({**_CHUNK, **part}) + "\\n\\n"
        for part in (
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hello"}}]},
            {"choices": [{"index": 0, "delta": {"content": " from"}}]},
            {"choices": [{"index": 0, "delta": {"content": " nginx."}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
            },
        )
    )
    + "data: [DONE]\\n\\n"
)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
done = function(summary, latency, requests)
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d, "non2xx": %d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


def ensure_tools() -> None:
    # nginx lives in /usr/sbin, often not on a non-root PATH; wrk must be found on its own
    # (checking /usr/sbin/nginx for both once skipped wrk's install where nginx was present).
    missing = [
        tool
        for tool, path in (("nginx", "/usr/sbin/nginx"), ("wrk", "/usr/bin/wrk"))
        if shutil.which(tool) is None and not Path(path).exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {missing}: install nginx-light and wrk (Debian) first")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"], check=True)


def start_nginx(
    workdir: Path, port: int, sse: bool = False, stream: str | None = None
) -> subprocess.Popen[bytes]:
    """nginx answering every POST with the canned completion, as JSON or (`sse`) as a stream
    (`stream`: another SSE body, served from a file: nginx limits a `return` text's length,
    and answers a POST to a file once its 405 is mapped back to 200)."""
    conf = workdir / "nginx.conf"
    sse = sse or stream is not None
    content_type = "text/event-stream" if sse else "application/json"
    if stream is None:
        body = (STREAM if sse else COMPLETION).replace("'", "\\'")
        location = f"default_type {content_type}; return 200 '{body}';"
    else:
        (workdir / "static").mkdir(exist_ok=True)
        (workdir / "static" / "stream.sse").write_text(stream)
        for path in (workdir, workdir / "static", workdir / "static" / "stream.sse"):
            path.chmod(0o755)  # nginx's workers run as nobody; mkdtemp makes 0700
        location = (f"default_type {content_type}; root {workdir}/static; "
                    "try_files /stream.sse =404; error_page 405 =200 $uri;")  # fmt: skip
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ {location} }}
  }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(workdir / "nginx-error.log")])
    wait_http(f"http://127.0.0.1:{port}/", method="POST")
    return proc


def wait_http(url: str, method: str = "GET", timeout: float = 20) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            req = urllib.request.Request(
                url, method=method, data=b"{}" if method == "POST" else None
            )
            with urllib.request.urlopen(req, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def write_config(
    workdir: Path, upstream_port: int, api_port: int, primary_url: str, scenario: str
) -> Path:
    primary: dict[str, object] = {
        "provider": "openai",
        "base_url": primary_url,
        "model": "bench-upstream",
        # Health probes would take a dead primary out of the plan; the scenarios measure the
        # breaker and the failover path, so the primary is never probed.
        "probe": False,
    }
    resilience: dict[str, object] = {}
    if scenario == "primary-refused":
        # The raw cost of failing over on every request: a breaker that never opens, and a retry
        # budget that lets every request fall back once.
        primary["breaker"] = {"consecutive_failures": 10**9, "minimum_calls": 10**9}
        resilience["budget"] = {"ratio": 1.0}
    config = {
        "api": {"host": "127.0.0.1", "port": api_port, "workers": 1},
        "log": {"dir": str(workdir / "logs"), "level": "INFO"},
        "sessions": {"default_selector": "bench-chain", "ttl_seconds": 3600},
        "models": {
            "bench-primary": {"deployments": [primary]},
            "bench-model": {
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                        "model": "bench-upstream",
                    }
                ]
            },
        },
        "chains": {"bench-chain": ["bench-primary", "bench-model"]},
        "resilience": resilience,
    }
    path = workdir / "bench.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def wrk(url: str, body: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": body},
        check=True,
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("BENCH "))
    data = json.loads(line[6:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric median over repeated runs (loopback numbers on a shared VM are noisy)."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def family(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers when there are several)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its descendants have used so far (from /proc)."""
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def migrate_ledger(url: str, lock_dir: Path) -> None:
    """Bring the ledger database at `url` to the schema's head."""
    engine = make_engine(url)
    await migrate(engine, lock_dir)
    await engine.dispose()


def start_gateway(
    workdir: Path,
    redis_url: str,
    config: Path,
    api_port: int,
    workers: int,
    *,
    ledger: bool,
    writer: str = "external",
    server: str = "uvicorn",
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None, str, str]:
    """`main.py api` on `config` with its ledger in `workdir` (schema migrated beforehand),
    answering; with a pinned session.
    `writer="external"` (what `main.py all` runs) also starts `main.py ledger`, which inserts the
    API's sealed WAL files; `"inline"` has the API write the database itself (`main.py api` alone
    with `ledger.writer: auto`).
    `server="granian"` serves the same app factory with granian instead (an experiment: the
    HTTP guards of services/api/http_guard.py are uvicorn's). Returns the process, its base URL
    the writer process (or None), and the session id."""
    database_url = f"sqlite+aiosqlite:///{workdir / 'ledger.db'}"
    if ledger:
        # As on every start of a deployment but its first: the schema is current, so the API
        # process does not import alembic (about 10 MB of RSS, kept for the process's life).
        asyncio.run(migrate_ledger(database_url, workdir / "wal"))
    env = {
        **os.environ,
        "FR_REDIS_URL": redis_url,
        "FR_CONFIG": str(config),
        "FR_LEDGER_ENABLED": "true" if ledger else "false",
        "FR_DATABASE_URL": database_url,
        "FR_LEDGER_WAL_DIR": str(workdir / "wal"),
        "FR_LEDGER_WRITER": writer,
    }
    argv = [sys.executable, str(ROOT / "main.py"), "api", "--workers", str(workers)]
    if server == "granian":
        argv = [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory",
                "--host", "127.0.0.1", "--port", str(api_port), "--workers", str(workers),
                "--loop", "uvloop", "--no-access-log", "services.app:app_from_env"]  # fmt: skip
    api = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    writer_proc = None
    if ledger and writer == "external":
        writer_proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "ledger"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    wait_http(base + "/livez")
    req = urllib.request.Request(base + "/initiate_call", data=b"{}", method="POST")
    with urllib.request.urlopen(req) as resp:
        return api, writer_proc, base, json.load(resp)["session_id"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 50], help="connection counts to measure"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per point; the median is reported"
    )
    parser.add_argument(
        "--scenario",
        choices=["healthy", "primary-refused", "breaker-open"],
        default="healthy",
        help="healthy: the session's chain starts at nginx; primary-refused: its first model "
        "refuses connections and its breaker never opens (every request fails over); "
        "breaker-open: the same dead primary with default breaker settings (it opens during "
        "the warm-up, so requests skip it)",
    )
    parser.add_argument(
        "--upstream",
        choices=["json", "sse"],
        default="sse",
        help="what nginx answers: an SSE stream (what real servers send to the gateway's "
        "streamed requests) or one JSON completion (a server that ignores `stream: true`)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes of the gateway"
    )
    parser.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="the ASGI server of the gateway (granian: an experiment, see start_gateway)",
    )
    parser.add_argument(
        "--peer",
        choices=["litellm"],
        action="append",
        default=[],
        help="also measure this gateway in the same run, against its own nginx answering JSON "
        "(installed on first use into bench/.peers/, see bench/peers.py)",
    )
    parser.add_argument(
        "--ledger",
        choices=["on", "off"],
        default="on",
        help="record every request in the usage ledger (SQLite in the bench's temp dir) or not",
    )
    parser.add_argument(
        "--writer",
        choices=["external", "inline"],
        default="external",
        help="who inserts the ledger's rows: a `main.py ledger` process (what `main.py all` runs; "
        "its CPU is counted with the gateway's) or the API process itself",
    )
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis = start_redis_server()
    try:
        upstream_port, api_port = free_port(), free_port()
        procs.append(start_nginx(workdir, upstream_port, sse=args.upstream == "sse"))
        direct = f"http://127.0.0.1:{upstream_port}/v1"
        primary = direct if args.scenario == "healthy" else f"http://127.0.0.1:{free_port()}/v1"
        config = write_config(workdir, upstream_port, api_port, primary, args.scenario)
        api, writer, base, session_id = start_gateway(
            workdir, redis.url, config, api_port, args.workers,
            ledger=args.ledger == "on", writer=args.writer, server=args.server,
        )  # fmt: skip
        if writer:  # stopped after the API (stop_all goes newest first), as main.py all does
            procs.append(writer)
        procs.append(api)
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        direct_body = json.dumps(
            {"model": "bench-upstream", "messages": [{"role": "user", "content": "Hello!"}]}
        )
        gw_body = json.dumps({"session_id": session_id, "message": "Hello!"})
        # (name, URL, body, pids whose process families' CPU is counted); direct: nginx itself
        gateway_pids = [api.pid] + ([writer.pid] if writer else [])
        targets = [("direct", direct + "/chat/completions", direct_body, []),
                   ("gateway", base + "/chat_completions", gw_body, gateway_pids)]  # fmt: skip
        if "litellm" in args.peer:
            json_port, peer_port = free_port(), free_port()
            (workdir / "json-upstream").mkdir()
            procs.append(start_nginx(workdir / "json-upstream", json_port))
            peer = start_litellm(workdir, peer_port, f"http://127.0.0.1:{json_port}/v1")
            procs.append(peer)
            wait_http(f"http://127.0.0.1:{peer_port}/health/liveliness", timeout=120)
            targets.append(("litellm", f"http://127.0.0.1:{peer_port}/chat/completions",
                            direct_body, [peer.pid]))  # fmt: skip
        for _, url, body, _ in targets:  # warm every path (connection pools, caches)
            wrk(url, body, 10, 2, script)
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for c in args.concurrency:
            for _ in range(args.repeats):  # interleaved, so drift hits every path alike
                for name, url, body, pids in targets:
                    before = sum(cpu_seconds(pid) for pid in pids)
                    run = wrk(url, body, c, args.duration, script)
                    # CPU per request is far steadier than requests/s on a shared VM: it does
                    # not move when a neighbour steals cycles, so code changes are judged by it.
                    if pids:
                        spent = sum(cpu_seconds(pid) for pid in pids) - before
                        run["cpu_us"] = spent / run["requests"] * 1e6
                    runs.setdefault((name, c), []).append(run)
        results = {key: median_run(r) for key, r in runs.items()}
        # One uvicorn worker serves in the launcher's own process; several are its children
        # (granian always serves from a child process, even with one worker)
        several = args.workers > 1 or args.server == "granian"
        workers = family(api.pid)[1:] if several else [api.pid]
        rss = max(rss_mb(pid) for pid in workers)
        print(
            f"scenario: {args.scenario}; upstream {args.upstream}; ledger {args.ledger} "
            f"({args.writer} writer); "
            f"median of {args.repeats} runs of "
            f"{args.duration}s; {args.workers} gateway worker(s); {os.cpu_count()} cores"
        )
        print(
            "| path | concurrency | requests/s | p50 ms | p99 ms | errors | worker CPU µs/request |"
        )
        print("|---|---|---|---|---|---|---|")
        for (path, c), r in results.items():
            p50, p99, errors = r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"] + r["non2xx"]
            cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else "-"
            print(
                f"| {path} | {c} | {r['rps']:.0f} | {p50:.3f} | {p99:.3f} | {errors:.0f} | {cpu} |"
            )
        for name in [t[0] for t in targets[1:]]:
            for c in args.concurrency:
                added = (results[(name, c)]["p50_us"] - results[("direct", c)]["p50_us"]) / 1000
                print(f"{name}: added p50 latency at concurrency {c}: {added:.3f} ms")
        if "litellm" in args.peer:
            for c in args.concurrency:
                ratio = results[("gateway", c)]["rps"] / results[("litellm", c)]["rps"]
                print(f"gateway / litellm requests/s at concurrency {c}: {ratio:.1f} x")
        print(f"gateway worker RSS after the runs (largest worker): {rss:.1f} MB")
    finally:
        stop_all(procs, redis, workdir)


def stop_all(procs: list[subprocess.Popen[bytes]], redis: EmbeddedRedis, workdir: Path) -> None:
    """SIGTERM every process started (newest first), stop Redis, remove the scratch directory."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    redis.stop()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
