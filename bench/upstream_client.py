"""CPU per upstream call: aiohttp against the gateway's own client, to the same nginx.

    .venv/bin/python bench/upstream_client.py [--requests 5000] [--rounds 3]

One process, one keep-alive connection, sequential POSTs of a chat request to nginx answering
the 6-chunk SSE stream of bench/run.py; every body is read to its end. Prints the process's CPU
(user + system, so the kernel's share of loopback is in both) per request, alternating the two
clients each round. This is the piece of a turn `platform/http_client.py` replaced.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import ensure_tools, start_nginx, wait_http  # noqa: E402

from services.platform.http_client import HTTPClient  # noqa: E402
from services.platform.redis_connection import free_port  # noqa: E402

BODY = b'{"model":"bench-upstream","messages":[{"role":"user","content":"Hello!"}],"stream":true}'
HEADERS = {"Content-Type": "application/json"}


async def with_aiohttp(url: str, n: int) -> None:
    """As the gateway used aiohttp: one session, no cookie jar, connect timeout only."""
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2)
        for _ in range(n):
            resp = await session.post(url, data=BODY, headers=HEADERS, timeout=timeout)
            size = sum([len(block) async for block in resp.content.iter_any()])
            resp.release()
            assert resp.status == 200
            assert size > 100


async def with_ours(url: str, n: int) -> None:
    http = HTTPClient(max_connections=1000)
    try:
        for _ in range(n):
            resp = await http.request("POST", url, headers=HEADERS, body=BODY, connect_timeout=2)
            size = sum([len(block) async for block in resp.iter_any()])
            resp.release()
            assert resp.status == 200
            assert size > 100
    finally:
        await http.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-client-"))
    port = free_port()
    nginx = start_nginx(workdir, port, sse=True)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_http(url, method="POST")
        print("| round | aiohttp CPU µs/request | ours CPU µs/request |")
        print("|---|---|---|")
        for round_no in range(1, args.rounds + 1):
            cells = []
            for client in (with_aiohttp, with_ours):
                before = cpu_seconds()
                uvloop.run(client(url, args.requests))
                cells.append(f"{(cpu_seconds() - before) / args.requests * 1e6:.1f}")
            print(f"| {round_no} | {cells[0]} | {cells[1]} |")
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
