"""Redis URLs: which deployment they name (pure parsing), and that passwords never show."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from services.config import redact_url
from services.errors import RedisURLError
from services.platform.redis_topology import async_redis, parse_redis_url
from tests.helpers import MAIN
from tests.redis_topology import ClusterSet


def test_a_plain_url_is_standalone_and_passed_through() -> None:
    target = parse_redis_url("rediss://u:pw@h:6380/2")
    assert target.mode == "standalone" and target.url == "rediss://u:pw@h:6380/2"


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_redis_url(
        "redis+sentinel://app:p%40ss@s1:26380,s2/fr-main/3?sentinel_password=x"
    )
    assert target.mode == "sentinel" and not target.tls
    assert target.nodes == (("s1", 26380), ("s2", 26379)), "26379: the sentinel port by default"
    assert (target.service, target.db) == ("fr-main", 3)
    assert (target.username, target.password, target.sentinel_password) == ("app", "p@ss", "x")
    assert parse_redis_url("rediss+sentinel://s1/fr").tls


def test_a_cluster_url_names_seed_nodes_and_only_database_zero() -> None:
    target = parse_redis_url("redis-cluster://n1:7000,n2:7001,n3")
    assert target.mode == "cluster"
    assert target.nodes == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert parse_redis_url("rediss-cluster://n1:7000/0").tls


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1:26379/fr/x", "database number"),
        ("redis-cluster://n1:7000/1", "only database 0"),
        ("redis-cluster://n1:port", "not a port"),
        ("redis-cluster://n1:7000,,n2", "empty host"),
    ],
)
def test_malformed_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(RedisURLError, match=why):
        parse_redis_url(url)


def test_redaction_covers_several_hosts_and_password_parameters() -> None:
    assert redact_url("redis+sentinel://:pw@s1:1,s2:2/fr/0?sentinel_password=zz&x=1") == (
        "redis+sentinel://:***@s1:1,s2:2/fr/0?sentinel_password=***&x=1"
    )
    assert redact_url("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_check_config_refuses_a_malformed_sentinel_url_without_showing_its_password() -> None:
    env = {**os.environ, "FR_REDIS_URL": "redis+sentinel://:topsecret@s1:26379"}
    out = subprocess.run([sys.executable, MAIN, "check-config"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert "redis.url: a redis+sentinel:// URL needs the service name" in out.stderr
    assert "topsecret" not in out.stdout + out.stderr


async def _pull_connections_under_commands(client: Any) -> list[BaseException]:
    """Fifty SET+GETs at a time; each round, once they have got `steps` event-loop turns far, every
    node's connections are closed under them (what redis-py's Cluster client itself does on a
    node's error). What the commands raised."""
    failures: list[BaseException] = []

    async def get(key: str) -> None:
        try:
            await client.set(key, "v")
            assert await client.get(key) == b"v"
        except Exception as exc:  # collected, checked by the caller
            failures.append(exc)

    await client.ping()
    # Where in a command's progress the closing lands depends on this machine's timing, so
    # every point up to 40 loop turns (4,000 commands, a few seconds).
    for steps in range(40):
        commands = [asyncio.create_task(get(f"race:{n}")) for n in range(50)]
        for _ in range(steps):
            await asyncio.sleep(0)
        if isinstance(client, AsyncRedisCluster):
            for node in client.get_nodes():
                await node.disconnect()
        else:  # what a standalone or Sentinel client's pool does on a failover
            await client.connection_pool.disconnect()
        await asyncio.gather(*commands)
    return failures


async def test_a_cluster_connection_closed_under_a_command_is_retried_not_a_500(
    cluster_set: ClusterSet,
) -> None:
    """redis-py's Cluster client closes a node's connections on its own errors (a ClusterDown,
    a dropped connection) while other commands are in flight on them; those commands then die
    with an AttributeError from inside redis-py (a 500 for a chat turn). The same closing, done
    directly at every point of the commands' progress: redis-py's own client fails, the
    gateway's retries the unsent command and every command succeeds."""
    seeds = [AsyncClusterNode(h, p) for h, p in parse_redis_url(cluster_set.url).nodes]
    plain = AsyncRedisCluster(startup_nodes=seeds, socket_timeout=2)
    ours = async_redis(cluster_set.url, timeout=2)
    try:
        plain_failures = await _pull_connections_under_commands(plain)
        # If redis-py stops racing, this fails: then the wrapper in redis_topology can go.
        assert any(isinstance(f, AttributeError | RuntimeError | TypeError)
                   for f in plain_failures), "the race was not exercised"  # fmt: skip
        assert await _pull_connections_under_commands(ours) == []
    finally:
        await plain.aclose()
        await ours.aclose()


async def test_a_standalone_connection_closed_under_a_command_is_a_connection_error(
    redis_url: str,
) -> None:
    """The same race on a standalone (and Sentinel) client: a pool's connections closed under
    commands in flight, as on a failover (seen as a 500 in the Sentinel failover test). redis-py's
    own client fails some commands with an AttributeError; the gateway's fails them only with
    the ConnectionError its fail-open path answers. Not retried: here a command may have been
    written already."""
    plain = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    ours = async_redis(redis_url, timeout=2)
    try:
        plain_failures = await _pull_connections_under_commands(plain)
        # If redis-py stops racing, this fails: then the wrapper in redis_topology can go.
        assert any(isinstance(f, AttributeError | RuntimeError | TypeError)
                   for f in plain_failures), "the race was not exercised"  # fmt: skip
        failures = await _pull_connections_under_commands(ours)
        assert failures, "closing connections under commands fails some of them"
        assert all(isinstance(f, RedisConnectionError) for f in failures), failures[:3]
        # Pipelines too (breaker syncs, budgets): answered, or a ConnectionError, never another
        # error (whether a round hits the race depends on this machine's timing).
        for steps in range(10):
            pipe = ours.pipeline(transaction=False)
            pipe.set("race:pipe", "v").get("race:pipe")
            running = asyncio.create_task(pipe.execute())
            for _ in range(steps):
                await asyncio.sleep(0)
            await ours.connection_pool.disconnect()
            with contextlib.suppress(RedisConnectionError):
                assert await running == [True, b"v"]
    finally:
        await plain.aclose()
        await ours.aclose()
