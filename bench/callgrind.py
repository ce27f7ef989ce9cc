"""Instructions per request on the healthy path, counted by callgrind: steady on a noisy machine.

    .venv/bin/python bench/callgrind.py [--requests 200] [--upstream sse|json] [--root TREE]

Starts a private redis-server, nginx answering a canned completion (SSE or JSON), and one gateway
worker (`main.py api` of TREE, default this checkout) under `valgrind --tool=callgrind` with
instrumentation off. After a warm-up it switches instrumentation on, sends `--requests`
sequential `/chat_completions` requests of a pinned session on one keep-alive connection
(before 2026-11-23 evening: a new connection per request, which counted ~2.28 M instructions
per request where keep-alive counts fewer), switches it off, and prints the
instructions executed per request (`callgrind_control`). Comparing two trees (`--root` on a
worktree of another commit) gives a cost difference that wall-clock runs here cannot resolve.
Needs valgrind (Debian: valgrind), nginx and wrk's install step from bench/run.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import ensure_tools, start_nginx, stop_all, wait_http, write_config  # noqa: E402

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402


def post(url: str, body: dict[str, object]) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


class KeepAlive:
    """One persistent connection, as wrk, the OpenAI SDK and every HTTP client pool use: the
    count is then the request path's, not a TCP handshake's and a new protocol object's."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: dict[str, object]) -> bytes:
        self.conn.request("POST", path, json.dumps(body).encode(),
                          {"Content-Type": "application/json"})  # fmt: skip
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            sys.exit(f"{path} answered {resp.status}: {data[:200]!r}")
        return data


def control(pid: int, *args: str) -> str:
    return subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, check=True
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--upstream", choices=["json", "sse"], default="sse")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree whose main.py runs")
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-callgrind-"))
    redis = start_redis_server()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port, api_port = free_port(), free_port()
        procs.append(start_nginx(workdir, upstream_port, sse=args.upstream == "sse"))
        direct = f"http://127.0.0.1:{upstream_port}/v1"
        config = write_config(workdir, upstream_port, api_port, direct, "healthy")
        env = {
            **os.environ,
            "FR_REDIS_URL": redis.url,
            "FR_CONFIG": str(config),
            "FR_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'ledger.db'}",
            "FR_LEDGER_WAL_DIR": str(workdir / "wal"),
        }
        out = workdir / "callgrind.out"
        api = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", sys.executable, str(args.root / "main.py"), "api"],
            env=env, cwd=args.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(api)
        base = f"http://127.0.0.1:{api_port}"
        wait_http(base + "/livez", timeout=600)
        session = json.loads(post(base + "/initiate_call", {}))["session_id"]
        body = {"session_id": session, "message": "Hello!"}
        client = KeepAlive(api_port)
        for _ in range(30):  # warm: connection pools, caches, first-call paths
            client.post("/chat_completions", body)
        control(api.pid, "--instr=on")
        for _ in range(args.requests):
            client.post("/chat_completions", body)
        control(api.pid, "--dump=measured")
        dumps = sorted(workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        text = dumps[-1].read_text() if dumps else ""
        found = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.MULTILINE)
        if found is None:
            sys.exit("no instruction count in the callgrind dump")
        total = int(found.group(1))
        print(
            f"tree {args.root}; upstream {args.upstream}; {args.requests} requests: "
            f"{total / args.requests:,.0f} instructions per request"
        )
    finally:
        stop_all(procs, redis, workdir)


if __name__ == "__main__":
    main()
