"""`main.py redis`: is Redis reachable, which version, how fast; `--watch` keeps checking."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from services.config import redact_url
from services.platform.redis_topology import sync_redis


@dataclass(frozen=True)
class RedisCheck:
    """The result of one check."""

    ok: bool
    url: str
    version: str | None = None
    rtt_ms: float | None = None
    error: str | None = None

    def describe(self) -> str:
        """One human line."""
        where = redact_url(self.url)
        if self.ok:
            return f"Redis OK at {where}: version {self.version}, round trip {self.rtt_ms:.2f} ms"
        return f"Redis UNREACHABLE at {where}: {self.error}"


def check_redis(
    url: str, *, timeout: float = 1.0, clock: Callable[[], float] = time.perf_counter
) -> RedisCheck:
    """PING (timed) and INFO server once; never raises."""
    try:
        client = sync_redis(url, timeout=timeout)
    except (redis.RedisError, OSError) as exc:  # a cluster client connects when built
        return RedisCheck(False, url, error=f"{type(exc).__name__}: {exc}")
    try:
        client.ping()  # connect first, so the timed PING measures a round trip, not a handshake
        started = clock()
        client.ping()
        rtt_ms = (clock() - started) * 1000
        return RedisCheck(True, url, server_version(client.info("server")), rtt_ms)
    except (redis.RedisError, OSError) as exc:
        return RedisCheck(False, url, error=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def server_version(info: dict[str, Any]) -> str:
    """`redis_version` of INFO server; a cluster client answers one INFO per node, keyed by
    node, and the first node's version stands for them."""
    if "redis_version" not in info and info:
        first = next(iter(info.values()))
        info = first if isinstance(first, dict) else {}
    return str(info.get("redis_version", "unknown"))


def record(url: str, check: RedisCheck, *, prefix: str, ttl_seconds: int) -> None:
    """Store the latest result in Redis (only possible when it is reachable)."""
    client = sync_redis(url, timeout=1.0)
    key = f"{prefix}redis_health"
    try:
        client.hset(
            key,
            mapping={
                "status": "ok",
                "version": check.version or "",
                "latency_ms": f"{check.rtt_ms:.3f}",
                "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        client.expire(key, ttl_seconds)
    finally:
        client.close()


def watch(
    url: str,
    *,
    interval: float,
    prefix: str,
    stop: threading.Event,
    report: Callable[[RedisCheck], None],
) -> None:
    """Check every `interval` seconds until `stop` is set; record successes in Redis."""
    while True:
        check = check_redis(url)
        report(check)
        if check.ok:
            # If it went away between the check and the write, the next check will say so.
            with contextlib.suppress(redis.RedisError, OSError):
                record(url, check, prefix=prefix, ttl_seconds=max(10, int(interval * 3)))
        if stop.wait(interval):
            return
