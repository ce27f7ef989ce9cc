"""Session pins this process read from Redis recently, dropped the moment any replica re-pins.

A chat turn's only Redis round trip was its session's GETEX (read the pin, refresh its TTL).
This cache answers a turn from memory instead when the same session was read less than
`sessions.cache_seconds` ago, so a session's TTL is refreshed at most once per that interval per
process (it expires between `ttl_seconds - cache_seconds` and `ttl_seconds` after its last turn).
It holds the sessions read within the last `cache_seconds`, at most 100,000 (about 25 MB).

Correct across replicas because every re-pin publishes the session id on one channel
(`<prefix>session-pins`, from the same Lua script that writes the pin) and every process follows
that channel (`follow_invalidations`) and drops the id. The cache is used only while that feed is
subscribed ("armed"): it is emptied whenever the feed (re)subscribes, since messages may have been
missed while it was not, and bypassed whenever the feed or Redis is down. A read that raced a
re-pin is not stored (`generation`). And the replica that re-pins waits, briefly, until its own
copy of the message comes back (`delivered`): Redis sends a message to every subscriber in the
same step, so by the time the client hears the re-pin answered, every following replica has been
sent the invalidation.

What it does not see: a pin changed in Redis by something other than the gateway (an operator's
SET, EXPIRE or FLUSHALL) is seen within `cache_seconds`. `cache_seconds: 0` turns the cache off
(one GETEX per turn, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.client import PubSub

from services.platform.redis_gate import REDIS_ERRORS

# Beyond this many cached sessions the oldest entry is dropped (it is read from Redis next time).
MAX_CACHED_PINS = 100_000


class PinCache:
    """session id -> its raw Redis value (`<owner> <selector>`), trusted while fresh and armed."""

    def __init__(
        self,
        refresh_seconds: float,
        *,
        max_entries: int = MAX_CACHED_PINS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self._max = max_entries
        self._clock = clock
        self._pins: dict[str, tuple[str, float]] = {}
        # Armed only while the invalidation feed is subscribed: an unarmed cache answers nothing.
        self.armed = False
        # Bumped by every invalidation: a read that started before one is not stored.
        self.generation = 0
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    @property
    def enabled(self) -> bool:
        return self.refresh_seconds > 0

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, session_id: str) -> str | None:
        """The cached value, if the cache is armed and it was read within `refresh_seconds`."""
        if not self.armed:
            return None
        entry = self._pins.get(session_id)
        if entry is None:
            return None
        if self._clock() - entry[1] >= self.refresh_seconds:
            del self._pins[session_id]  # stale: the caller reads (and refreshes) it in Redis
            return None
        return entry[0]

    def put(self, session_id: str, value: str, generation: int) -> None:
        """Store a value read from Redis, unless an invalidation arrived since `generation` was
        taken (the read may have seen the pin from before a re-pin)."""
        if not self.armed or generation != self.generation or not self.enabled:
            return
        pins, now = self._pins, self._clock()
        pins.pop(session_id, None)  # re-inserted at the end: the dict stays in order of reads
        # Drop what went stale at the front (two per store keeps up with any rate of stores),
        # so the cache holds the sessions of the last `refresh_seconds`, not every one ever seen.
        for _ in range(2):
            oldest = next(iter(pins), None)
            if oldest is None or now - pins[oldest][1] < self.refresh_seconds:
                break
            del pins[oldest]
        if len(pins) >= self._max:
            del pins[next(iter(pins))]
        pins[session_id] = (value, now)

    def forget(self, session_id: str) -> None:
        """This process re-pinned `session_id`: drop it, and any read of it in flight."""
        self.generation += 1
        self._pins.pop(session_id, None)

    def received(self, session_id: str) -> None:
        """The feed says a replica (maybe this one) re-pinned `session_id`."""
        self.forget(session_id)
        for waiter in self._waiting.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """Drop every entry (after a Redis outage: pins may have changed meanwhile)."""
        self.generation += 1
        self._pins.clear()

    def arm(self) -> None:
        """The feed is (again) subscribed: start empty, whatever was missed meanwhile."""
        self.clear()
        self.armed = True

    def disarm(self) -> None:
        """The feed is down: answer nothing from memory until it is back."""
        self.clear()
        self.armed = False

    def expect(self, session_id: str) -> asyncio.Future[None] | None:
        """A future the feed resolves when it receives `session_id`'s invalidation; taken before
        a write that may publish one (the feed may deliver it before the write's own reply).
        None when the feed is down. Pass it to `delivered` or `unexpect`."""
        if not self.armed:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session_id, []).append(waiter)
        return waiter

    def unexpect(self, session_id: str, waiter: asyncio.Future[None] | None) -> None:
        """Stop waiting for `session_id` (the write published nothing, or it was delivered)."""
        waiters = self._waiting.get(session_id)
        if waiter is not None and waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[session_id]

    async def delivered(
        self, session_id: str, waiter: asyncio.Future[None] | None, wait_seconds: float
    ) -> bool:
        """Wait until the feed has received `session_id`'s invalidation (published by this
        process); False when the feed was down or it took longer than `wait_seconds`."""
        if waiter is None:
            return False
        try:
            await asyncio.wait_for(waiter, wait_seconds)
        except TimeoutError:
            return False
        finally:
            self.unexpect(session_id, waiter)
        return True


async def follow_invalidations(
    redis: aioredis.Redis,
    channel: str,
    cache: PinCache,
    *,
    ping_seconds: float = 5.0,
    retry_seconds: float = 1.0,
) -> None:
    """Keep `cache` in step with re-pins published on `channel`, for the process's life.

    Every subscribe confirmation (the first, and redis-py's own resubscribe after it reconnects)
    arms the cache empty. Silence is checked with a PING every `ping_seconds`: a connection that
    answers nothing for two of them is treated as lost. Any failure disarms the cache and the
    feed subscribes again after `retry_seconds`.
    """
    last_why = ""
    while True:
        pubsub = None
        try:
            # A Cluster client picks the feed's node from its slot table, filled by this.
            await redis.initialize()
            pubsub = redis.pubsub()
            await pubsub.subscribe(channel)
            await _relay(pubsub, cache, ping_seconds)
            why = "it went silent"
        except Exception as exc:  # noqa: BLE001 - whatever ends the feed must disarm the cache
            # (a client bug included: an armed cache with no feed would serve re-pinned
            # sessions their old pin).
            why = f"{type(exc).__name__}: {exc}"
        finally:
            if pubsub is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        if cache.armed or why != last_why:  # once per cause, not once per retry
            logger.warning("session pin cache off until its feed is back ({}); turns read their "
                           "pin from Redis meanwhile", why)  # fmt: skip
            last_why = why
        cache.disarm()
        await asyncio.sleep(retry_seconds)


async def _relay(pubsub: PubSub, cache: PinCache, ping_seconds: float) -> None:
    """Hand the feed's messages to `cache` until the connection fails (raises) or stays silent
    for two `ping_seconds` after a PING (returns)."""
    clock = asyncio.get_running_loop().time
    heard = clock()
    pinged = False
    while True:
        message = await pubsub.get_message(timeout=ping_seconds)
        if message is None:
            if clock() - heard >= 2 * ping_seconds:
                return
            if not pinged:
                await pubsub.ping()
                pinged = True
            continue
        heard, pinged = clock(), False
        kind = message.get("type")
        if kind == "subscribe":
            cache.arm()
        elif kind == "message":
            for session_id in str(message["data"]).split():  # one id, or a write-back's many
                cache.received(session_id)
