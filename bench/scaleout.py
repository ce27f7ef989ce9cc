"""Scale-out bench: three API replicas on a three-primary Redis Cluster against the same three
replicas on one standalone Redis, interleaved, and the Redis commands each request costs.

    .venv/bin/python bench/scaleout.py [--duration 8] [--rounds 3] [--connections 16]

nginx answers the canned SSE completion; three `main.py api` processes (one worker each, their
own SQLite ledger) share one Redis; one wrk per replica posts `/chat_completions` with a pinned
session at `--connections` each, all three at once. Redis commands per request: the increase of
INFO commandstats' calls (summed over the cluster's nodes) over the requests answered, which
includes the replicas' background syncs (breakers, counters every 0.5 s). On this 2-core machine
three replicas, nginx and wrk share two cores, so the ratio says what the Cluster costs, not
what three machines would give.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import WRK_SCRIPT, ensure_tools, start_nginx, wait_http, write_config, wrk  # noqa: E402

from services.platform.redis_connection import free_port, start_redis_server  # noqa: E402
from tests.redis_topology import start_cluster  # noqa: E402


def commands_so_far(ports: list[int]) -> int:
    """Calls of every command on these Redis servers since they started (INFO commandstats)."""
    total = 0
    for port in ports:
        out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        for line in out.splitlines():
            if line.startswith("cmdstat_") and not line.startswith(
                ("cmdstat_info", "cmdstat_ping")
            ):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


def start_replicas(
    workdir: Path, config: Path, redis_url: str
) -> list[tuple[subprocess.Popen[bytes], str]]:
    replicas = []
    for n in range(3):
        port = free_port()
        home = workdir / f"replica-{n}"
        home.mkdir(parents=True)
        env = {
            **os.environ,
            "FR_CONFIG": str(config),
            "FR_REDIS_URL": redis_url,
            "FR_API_PORT": str(port),
            "FR_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'ledger.db'}",
            "FR_LEDGER_WAL_DIR": str(home / "wal"),
            "FR_LOG_DIR": str(home / "logs"),
        }
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "api"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        replicas.append((proc, f"http://127.0.0.1:{port}"))
    for _, base in replicas:
        wait_http(base + "/readyz", timeout=60)
    return replicas


def session(base: str) -> str:
    req = urllib.request.Request(base + "/initiate_call", data=b"{}", method="POST")
    with urllib.request.urlopen(req) as resp:
        return str(json.load(resp)["session_id"])


def round_of(replicas: list[str], sid: str, connections: int, duration: int,
             script: Path) -> dict[str, float]:  # fmt: skip
    """One wrk per replica, all at once; the summed requests/s and requests."""
    body = json.dumps({"session_id": sid, "message": "Hello!"})
    results: list[dict[str, float]] = []

    def drive(base: str) -> None:
        results.append(wrk(base + "/chat_completions", body, connections, duration, script))

    threads = [threading.Thread(target=drive, args=(b,)) for b in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"rps": sum(r["rps"] for r in results), "requests": sum(r["requests"] for r in results),
            "errors": sum(r["errors"] + r["non2xx"] for r in results)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16, help="per replica")
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="fr-scaleout-"))
    standalone, cluster = start_redis_server(), start_cluster()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = free_port()
        procs.append(start_nginx(workdir, upstream, sse=True))
        config = write_config(workdir, upstream, free_port(), f"http://127.0.0.1:{upstream}/v1",
                              "healthy")  # fmt: skip
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        setups = {}
        for name, url, ports in (
            ("standalone", standalone.url, [standalone.port or 0]),
            ("cluster", cluster.url, [n.port for n in cluster.nodes]),
        ):
            replicas = start_replicas(workdir / name, config, url)
            procs.extend(p for p, _ in replicas)
            bases = [b for _, b in replicas]
            sid = session(bases[0])
            round_of(bases, sid, 4, 2, script)  # warm-up
            setups[name] = (bases, sid, ports)
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for _ in range(args.rounds):  # interleaved
            for name, (bases, sid, ports) in setups.items():
                before = commands_so_far(ports)
                result = round_of(bases, sid, args.connections, args.duration, script)
                result["commands_per_request"] = (commands_so_far(ports) - before) / max(
                    1, result["requests"]
                )
                rows[name].append(result)
        print(f"three replicas, {args.connections} connections each, {args.duration} s, median of "
              f"{args.rounds} interleaved rounds, {os.cpu_count()} cores")  # fmt: skip
        print("| Redis | requests/s | errors | Redis commands per request |")
        print("|---|---|---|---|")
        median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                  for name, runs in rows.items()}  # fmt: skip
        for name, m in median.items():
            print(f"| {name} | {m['rps']:.0f} | {m['errors']:.0f} | "
                  f"{m['commands_per_request']:.2f} |")  # fmt: skip
        ratio = median["cluster"]["rps"] / median["standalone"]["rps"]
        print(f"cluster / standalone requests/s: {ratio:.2f}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        standalone.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
