"""The session pin cache: turns answered from memory, re-pins seen by every replica at once.

The cache's rules on a fake clock; then two session stores ("replicas", each its own client and
invalidation feed) on a real Redis of each topology, and the feed's faults on a private
redis-server that really drops connections and really stops answering.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from loguru import logger

from services.config.sections import SessionSettings
from services.platform.redis_connection import (
    async_client,
    redis_server_available,
    start_fakeredis_server,
    start_redis_server,
)
from services.platform.redis_gate import RedisGate
from services.routing.pin_cache import PinCache, follow_invalidations
from services.routing.sessions import SessionStore
from tests.helpers import FakeClock


def test_a_read_is_trusted_for_refresh_seconds_then_read_again() -> None:
    clock = FakeClock()
    cache = PinCache(60, clock=clock)
    cache.arm()
    cache.put("s", "k model-a", cache.generation)
    clock.now += 59.9
    assert cache.get("s") == "k model-a"
    clock.now += 0.1
    assert cache.get("s") is None, "stale: the next turn reads (and refreshes) it in Redis"


def test_an_unarmed_cache_answers_nothing_and_arming_starts_empty() -> None:
    cache = PinCache(60, clock=FakeClock())
    cache.put("s", "k model-a", cache.generation)
    assert cache.get("s") is None, "no feed yet: nothing is stored"
    cache.arm()
    cache.put("s", "k model-a", cache.generation)
    cache.disarm()
    assert cache.get("s") is None
    cache.arm()
    assert cache.get("s") is None, "re-armed after a gap: whatever was cached is gone"


def test_a_read_that_raced_a_re_pin_is_not_stored() -> None:
    """GETEX sent, a re-pin's invalidation arrives, then the (old) GETEX reply: not cached."""
    cache = PinCache(60, clock=FakeClock())
    cache.arm()
    before = cache.generation
    cache.received("s")
    cache.put("s", "k old-model", before)
    assert cache.get("s") is None


def test_the_oldest_entry_goes_first_when_full() -> None:
    cache = PinCache(60, max_entries=2, clock=FakeClock())
    cache.arm()
    for name in ("a", "b", "c"):
        cache.put(name, f"k {name}", cache.generation)
    assert [cache.get(n) for n in ("a", "b", "c")] == [None, "k b", "k c"]


def test_the_cache_holds_only_the_sessions_of_the_last_refresh_interval() -> None:
    """Many sessions, each read once: stale entries leave as new ones arrive (memory follows
    the sessions in use, not every session ever seen)."""
    clock = FakeClock()
    cache = PinCache(60, clock=clock)
    cache.arm()
    for n in range(10_000):
        clock.now += 0.1  # 10 new sessions a second: 600 are within the last 60 s
        cache.put(f"s{n}", "k model", cache.generation)
    assert 600 <= len(cache) <= 602
    cache.put("s9999", "k model", cache.generation)  # a re-read moves to the back
    clock.now += 59.95
    cache.put("new", "k model", cache.generation)
    assert cache.get("s9999") == "k model"


def test_a_pin_is_trusted_for_at_most_half_its_ttl() -> None:
    """A session in use is refreshed in Redis long before it could expire there."""
    assert SessionSettings().cache_refresh_seconds == 60
    assert SessionSettings(ttl_seconds=60).cache_refresh_seconds == 30
    assert SessionSettings(cache_seconds=0).cache_refresh_seconds == 0


@dataclass
class Replica:
    client: aioredis.Redis
    gate: RedisGate
    store: SessionStore
    feed: asyncio.Task[None]


async def until(predicate: Callable[[], bool], what: str, within: float = 10) -> None:
    """Wait for a condition a background task brings about (not for time to pass)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the feed's state; the product needs no Event
            await asyncio.sleep(0.005)
    assert predicate(), what


@asynccontextmanager
async def replicas(url: str, count: int, **feed: float) -> AsyncIterator[list[Replica]]:
    """`count` session stores on `url`, each with its own client and feed, all armed."""
    made: list[Replica] = []
    try:
        for _ in range(count):
            client = async_client(url)
            gate = RedisGate(client)
            store = SessionStore(client, gate, prefix="pc:", ttl_seconds=3600,
                                 fallback_selector="default", cache=PinCache(60))  # fmt: skip
            task = asyncio.create_task(
                follow_invalidations(client, store.invalidation_channel, store.cache, **feed)
            )
            made.append(Replica(client, gate, store, task))
        await until(lambda: all(r.store.cache.armed for r in made), "every feed subscribed")
        yield made
    finally:
        for replica in made:
            replica.feed.cancel()
            await asyncio.gather(replica.feed, return_exceptions=True)
            await replica.client.aclose()


async def test_a_re_pin_on_one_replica_reaches_the_others(topology_redis_url: str) -> None:
    """B re-pins a session A has cached: A's feed has the invalidation by the time B's pin
    returns... (same loop here, so A's feed is awaited), and A's next turn takes the new pin."""
    async with replicas(topology_redis_url, 2) as (a, b):
        assert await a.store.pin("s1", "model-a", "k")
        assert await a.store.selector("s1", "k") == "model-a"
        assert a.store.cache.get("s1") == "k model-a", "read once, now answered from memory"
        for model in ("model-b", "model-a", "model-b"):
            seen_by_a = a.store.cache.expect("s1")
            assert seen_by_a is not None
            assert await b.store.pin("s1", model, "k")
            assert await a.store.cache.delivered("s1", seen_by_a, 5), "A's feed got it"
            assert await a.store.selector("s1", "k") == model
            assert await b.store.selector("s1", "k") == model
        # Another key's session stays another key's, cached or not.
        assert await a.store.selector("s1", "intruder") is None


async def test_a_re_pin_waits_until_its_invalidation_was_delivered(
    topology_redis_url: str,
) -> None:
    """The replica that re-pins answers only once its own copy of the message came back: by
    then Redis has sent it to every subscriber. A new session publishes nothing."""
    async with replicas(topology_redis_url, 1) as (a,):
        assert await a.store.pin("s2", "model-a", "k")
        assert not a.store.cache._waiting, "a new pin published nothing, waits for nothing"
        watcher = async_client(topology_redis_url)
        await watcher.initialize()  # a Cluster client learns its slots (the pubsub's node)
        pubsub = watcher.pubsub()
        await pubsub.subscribe(a.store.invalidation_channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        assert await a.store.pin("s2", "model-b", "k")
        message = await pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == "s2"
        assert not a.store.cache._waiting
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await watcher.aclose()


async def test_a_re_pin_made_during_an_outage_is_announced_when_written_back(
    topology_redis_url: str,
) -> None:
    """B re-pinned a session while it could not reach Redis (kept in B); when Redis answers
    again B writes it back, and A, which had the old pin cached, drops it."""
    async with replicas(topology_redis_url, 2) as (a, b):
        sessions = ("s7", "s8")
        for session_id in sessions:
            assert await a.store.pin(session_id, "model-a", "k")
            assert await a.store.selector(session_id, "k") == "model-a"
        b.gate.mark_down(ConnectionError("test: B lost Redis"))
        for session_id in sessions:
            assert await b.store.pin(session_id, "model-b", "k"), "kept in B during the outage"
        seen_by_a = [a.store.cache.expect(session_id) for session_id in sessions]
        # (On a Cluster, PUBLISH inside the write-back's pipeline was refused: B stayed
        # fail-open for good.)
        assert await b.gate.check(), "Redis answers: B writes its pins back"
        for session_id, seen in zip(sessions, seen_by_a, strict=True):
            assert await a.store.cache.delivered(session_id, seen, 5), "one message, both ids"
            assert await a.store.selector(session_id, "k") == "model-b"


needs_redis_server = pytest.mark.skipif(
    not redis_server_available(), reason="needs the redis-server binary"
)


@needs_redis_server
async def test_a_dropped_feed_connection_empties_the_cache() -> None:
    """Messages sent while the feed reconnects are lost: whatever it cached is dropped."""
    server = start_redis_server()
    try:
        async with replicas(server.url, 1) as (a,):
            await a.store.pin("s3", "model-a", "k")
            await a.store.selector("s3", "k")
            assert a.store.cache.get("s3") is not None
            admin = async_client(server.url)
            assert await admin.client_kill_filter(_type="pubsub") == 1
            await admin.aclose()
            await until(lambda: a.store.cache.get("s3") is None, "the cache emptied")
            await until(lambda: a.store.cache.armed, "the feed back")
            assert await a.store.selector("s3", "k") == "model-a", "read from Redis again"
    finally:
        server.stop()


@needs_redis_server
@pytest.mark.parametrize("fault", ["stopped", "gone"])
async def test_a_feed_that_stops_answering_turns_the_cache_off(fault: str) -> None:
    """A Redis that really stops answering (SIGSTOP) or is gone: the feed disarms the cache, so
    no turn trusts a pin that may have been changed meanwhile."""
    server = start_redis_server()
    assert server.pid is not None
    try:
        async with replicas(server.url, 1, ping_seconds=0.1, retry_seconds=0.1) as (a,):
            await a.store.pin("s4", "model-a", "k")
            await a.store.selector("s4", "k")
            assert a.store.cache.get("s4") is not None
            if fault == "stopped":
                os.kill(server.pid, signal.SIGSTOP)
            else:
                server.stop()
            await until(lambda: not a.store.cache.armed, "the cache turned off")
            assert a.store.cache.get("s4") is None
            if fault == "stopped":
                os.kill(server.pid, signal.SIGCONT)
                await until(lambda: a.store.cache.armed, "the feed back after the pause")
    finally:
        if fault == "stopped":
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


async def test_re_pins_publish_on_the_embedded_fakeredis() -> None:
    """`main.py all` without redis-server runs fakeredis: its Lua must publish too."""
    server = start_fakeredis_server()
    try:
        async with replicas(server.url, 2) as (a, b):
            await a.store.pin("s5", "model-a", "k")
            assert await a.store.selector("s5", "k") == "model-a"
            seen_by_a = a.store.cache.expect("s5")
            assert await b.store.pin("s5", "model-b", "k")
            assert await a.store.cache.delivered("s5", seen_by_a, 5)
            assert await a.store.selector("s5", "k") == "model-b"
    finally:
        server.stop()


@needs_redis_server
async def test_a_redis_user_without_channel_rights_pins_and_caches_nothing() -> None:
    """Redis 7's ACL default gives a new user no pub/sub channels: re-pins still succeed (Redis
    stays in use, no fail-open), no feed arms, so every turn reads its pin from Redis and a
    re-pin on one replica is honoured at once by the other."""
    server = start_redis_server()
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        admin = async_client(server.url)
        await admin.execute_command("ACL", "SETUSER", "gw", "on", ">gw-secret", "~pc:*",
                                    "+@all", "resetchannels")  # fmt: skip
        await admin.aclose()
        url = server.url.replace("redis://", "redis://gw:gw-secret@")
        stores, feeds, clients = [], [], []
        for _ in range(2):
            client = async_client(url)
            gate = RedisGate(client)
            store = SessionStore(client, gate, prefix="pc:", ttl_seconds=3600,
                                 fallback_selector="default", cache=PinCache(60))  # fmt: skip
            feeds.append(asyncio.create_task(follow_invalidations(
                client, store.invalidation_channel, store.cache, retry_seconds=0.05)))  # fmt: skip
            stores.append((store, gate))
            clients.append(client)
        (a, gate_a), (b, gate_b) = stores
        await until(lambda: sum("NoPermissionError" in line for line in warnings) >= 2,
                    "both feeds refused, and saying so")  # fmt: skip
        assert await a.pin("s6", "model-a", "k")
        for model in ("model-b", "model-a"):
            assert await a.selector("s6", "k") in {"model-a", "model-b"}
            assert await b.pin("s6", model, "k"), "the re-pin succeeds without PUBLISH rights"
            assert await a.selector("s6", "k") == model, "A read Redis: nothing was cached"
        assert gate_a.available and gate_b.available, "no fail-open"
        assert not a.cache.armed and not b.cache.armed
        for task in feeds:
            task.cancel()
        await asyncio.gather(*feeds, return_exceptions=True)
        for client in clients:
            await client.aclose()
    finally:
        logger.remove(sink)
        server.stop()
    assert sum("NoPermissionError" in line for line in warnings) == 2, (
        "once per process, not per retry"
    )
