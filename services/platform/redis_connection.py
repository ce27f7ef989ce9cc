"""Redis clients, and a private Redis server for the embedded default.

`ensure_redis` answers which Redis to use: the configured one if it answers, otherwise a private
``redis-server`` on a free port (when the binary exists), otherwise an in-process fakeredis TCP
server. Tests use the same functions to get a private server of their own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis.asyncio as aioredis

from services.config import redact_url
from services.platform.redis_topology import async_redis, sync_redis


def async_client(url: str, *, timeout: float = 1.0) -> aioredis.Redis:
    """An asyncio Redis client (standalone, Sentinel or Cluster, as `url` says) with short
    timeouts so a dead Redis fails fast, not slowly."""
    return async_redis(
        url, timeout=timeout, decode_responses=True, health_check_interval=0, max_connections=512
    )


def ping(url: str, *, timeout: float = 0.5) -> bool:
    """Whether Redis answers PING at `url` (through the sentinels or the cluster, if named)."""
    try:
        client = sync_redis(url, timeout=timeout)
    except (redis.RedisError, OSError):  # a cluster client connects (and fails) when built
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_argv(port: int) -> list[str]:
    """Command line of a private, non-persistent redis-server on loopback."""
    return [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip


@dataclass
class EmbeddedRedis:
    """A Redis the gateway started itself (or the external one, when it answered)."""

    url: str
    kind: Literal["external", "redis-server", "fakeredis"]
    port: int | None = None
    # The redis-server child's pid (tests pause it to simulate an unreachable Redis).
    pid: int | None = None
    _stop: Any = field(default=None, repr=False)

    def describe(self) -> str:
        """A log-friendly sentence saying which Redis is in use."""
        if self.kind == "external":
            return f"using Redis at {redact_url(self.url)}"
        if self.kind == "redis-server":
            return f"no Redis answered; started a private redis-server at {self.url}"
        return (
            f"no Redis answered and no redis-server binary found; serving an in-process "
            f"fakeredis at {self.url} (state lives only as long as this process)"
        )

    def stop(self) -> None:
        """Stop the server this object started (no-op for an external one)."""
        if self._stop is not None:
            self._stop()
            self._stop = None


def wait_until_answers(url: str, deadline_seconds: float) -> bool:
    """Poll PING until it answers or the deadline passes (a readiness wait, not a timed sleep)."""
    give_up = time.monotonic() + deadline_seconds
    while time.monotonic() < give_up:
        if ping(url, timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def start_redis_server(port: int | None = None) -> EmbeddedRedis:
    """Start a private redis-server child process and wait until it answers."""
    port = port or free_port()
    proc = subprocess.Popen(redis_server_argv(port), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    if not wait_until_answers(url, 10):
        proc.kill()
        raise RuntimeError(f"redis-server did not answer on port {port}")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return EmbeddedRedis(url=url, kind="redis-server", port=port, pid=proc.pid, _stop=stop)


def start_fakeredis_server(port: int | None = None) -> EmbeddedRedis:
    """Serve fakeredis over real TCP from a daemon thread of this process."""
    from fakeredis import TcpFakeServer  # imported lazily: only the no-binary fallback needs it

    port = port or free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    if not wait_until_answers(url, 10):
        server.shutdown()
        raise RuntimeError(f"fakeredis did not answer on port {port}")

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return EmbeddedRedis(url=url, kind="fakeredis", port=port, _stop=stop)


def redis_server_available() -> bool:
    """Whether a redis-server binary is on PATH."""
    return shutil.which("redis-server") is not None


def start_private_redis() -> EmbeddedRedis:
    """A private Redis: redis-server when installed, else fakeredis over TCP."""
    return start_redis_server() if redis_server_available() else start_fakeredis_server()
