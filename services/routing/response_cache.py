"""The `cache` tier: successful non-streamed answers in Redis, keyed by an exact request hash.

Only consulted when every model of the chain has failed, so a stale answer beats no answer. The
key hashes the selector and the request with its keys sorted, minus what does not change the
answer (`stream`, `stream_options`). Writes leave the request path: `remember` queues the entry
and `run` writes queued entries in one pipelined round trip per `flush_interval_seconds`. An
entry written recently is not queued again, so a hot prompt costs one write per half TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from loguru import logger

from services.config import CacheSettings
from services.platform.redis_gate import REDIS_ERRORS, RedisGate

Json = dict[str, Any]
IGNORED_KEYS = frozenset({"stream", "stream_options"})
MAX_QUEUED = 10_000
MAX_RECENT = 50_000


class ResponseCache:
    """Exact-match answers with a TTL, written behind the request path."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        settings: CacheSettings,
        *,
        prefix: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._settings = settings
        self._prefix = f"{prefix}cache:"
        self._clock = clock
        self._queued: dict[str, bytes] = {}
        self._recent: dict[str, float] = {}

    def key(self, selector: str, request: Json) -> str:
        """The cache key of a request routed by `selector`."""
        material = {k: v for k, v in request.items() if k not in IGNORED_KEYS}
        digest = hashlib.sha256(
            orjson.dumps([selector, material], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        return self._prefix + digest

    def remember(self, key: str, completion: Json) -> None:
        """Queue a successful answer for the next flush."""
        now = self._clock()
        if self._recent.get(key, 0.0) > now or len(self._queued) >= MAX_QUEUED:
            return
        value = orjson.dumps(completion)
        if len(value) <= self._settings.max_entry_bytes:
            self._queued[key] = value
            if len(self._recent) >= MAX_RECENT:
                self._recent.clear()
            self._recent[key] = now + self._settings.ttl_seconds / 2

    async def lookup(self, key: str) -> Json | None:
        """The cached answer, or None (also when Redis is down or the entry is unreadable)."""
        raw: Any = self._queued.get(key)  # not flushed yet: answer from memory
        if raw is None and self._gate.available:
            try:
                raw = await self._redis.get(key)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("unreadable cache entry {}; ignoring it", key)
            return None
        return value if isinstance(value, dict) else None

    async def flush(self) -> int:
        """Write every queued entry in one round trip; entries stay queued if Redis is down."""
        if not self._queued or not self._gate.available:
            return 0
        batch, self._queued = self._queued, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in batch.items():
                    pipe.set(key, value, ex=self._settings.ttl_seconds)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            self._queued = {**batch, **self._queued}
            return 0
        return len(batch)

    async def run(self) -> None:
        """Flush on an interval while the process runs."""
        while True:
            await asyncio.sleep(self._settings.flush_interval_seconds)
            await self.flush()
