"""Which Redis deployment a URL names, and clients for it: standalone, Sentinel or Cluster.

    redis://[user:password@]host:port/db              one server (also rediss://, unix://)
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]
    redis-cluster://[user:password@]host:port[,host:port...]

(`rediss+sentinel://` and `rediss-cluster://` use TLS.) A Sentinel URL names the sentinels and the
monitored service: the client asks the sentinels for the current primary and asks again when a
connection to it fails, so a failover costs the requests of that moment a fail-open answer, not
a restart. A Cluster URL names any of the nodes (the client learns the rest and follows slot
moves). The password is the data nodes' one; `?sentinel_password=` sets the sentinels' when it
differs. Parsing is pure; the clients are redis-py's own Sentinel and RedisCluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from services.errors import RedisURLError

Mode = Literal["standalone", "sentinel", "cluster"]
SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis-cluster": ("cluster", False),
    "rediss-cluster": ("cluster", True),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL."""

    mode: Mode
    url: str  # as configured (standalone clients are built from it)
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seed nodes
    service: str | None = None  # the Sentinel service (master) name
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """What `url` names; RedisURLError when it is malformed."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES:
        return RedisTarget("standalone", url)
    mode, tls = SCHEMES[scheme]
    parts = urlsplit("redis://" + rest)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    nodes = tuple(_host_port(h, 26379 if mode == "sentinel" else 6379) for h in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)
    service, db = None, 0
    if mode == "sentinel":
        if not path:
            raise RedisURLError(
                "a redis+sentinel:// URL needs the service name: .../<service>[/db]"
            )
        service = unquote(path[0])
        db = _db(path[1]) if len(path) > 1 else 0
    elif path and _db(path[0]) != 0:
        raise RedisURLError("Redis Cluster has only database 0")
    sentinel_password = query["sentinel_password"][0] if "sentinel_password" in query else None
    return RedisTarget(
        mode, url, nodes, service, db,
        unquote(username) or None, unquote(password) or None, sentinel_password, tls,
    )  # fmt: skip


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), ""
    if not host:
        raise RedisURLError("an empty host in a Redis URL")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise RedisURLError(f"not a port in a Redis URL: {port!r}") from None


def _db(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RedisURLError(f"not a database number in a Redis URL: {text!r}") from None


def _node_kwargs(target: RedisTarget, timeout: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


# What redis-py's asyncio clients raise from inside their connection layer when a connection is
# closed under a command in flight: the Cluster client closes every node's connections on one
# command's error (a ClusterDownError) and re-learns the topology; the standalone and Sentinel
# clients close a pool's connections on a failover or a dropped connection. Seen here on a
# Cluster node's restart and a Sentinel failover as AttributeError ('NoneType' object has no
# attribute 'writelines') and RuntimeError (uvloop: the handler is closed); redis/redis-py#3546
# reports the TypeError form. They mean "that connection broke".
_CONNECTION_RACE_ERRORS = (AttributeError, RuntimeError, TypeError)


def _as_connection_error(exc: Exception) -> RedisConnectionError:
    return RedisConnectionError(f"Redis connection closed under a command: {exc!r}")


class _RaceSafePipeline(aioredis.client.Pipeline):
    """A standalone or Sentinel pipeline whose connection races surface as a ConnectionError."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error)
        except _CONNECTION_RACE_ERRORS as exc:
            raise _as_connection_error(exc) from exc


class _RaceSafeRedis(aioredis.Redis):
    """redis-py's asyncio client (standalone, or a Sentinel primary's), with its connection
    races (above) raised as the ConnectionError they are: the gateway then answers fail-open
    instead of a 500. Not retried, unlike the Cluster client's: here the race can also land
    after a command was written, and a counting script must not run twice."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except _CONNECTION_RACE_ERRORS as exc:
            raise _as_connection_error(exc) from exc

    def pipeline(
        self, transaction: bool = True, shard_hint: str | None = None
    ) -> aioredis.client.Pipeline:
        return _RaceSafePipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class _AsyncSentinelManaged(_RaceSafeRedis):
    """The primary's client, which also closes its connections to the sentinels (redis-py's
    own leaves them open when the client is closed)."""

    sentinels: list[aioredis.Redis] = []  # noqa: RUF012 - set once per instance by async_redis

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinels:
            await client.aclose()


class _SentinelManaged(redis.Redis):
    """The blocking counterpart of `_AsyncSentinelManaged`."""

    sentinels: list[redis.Redis] = []  # noqa: RUF012 - set once per instance by sync_redis

    def close(self) -> None:
        super().close()
        for client in self.sentinels:
            client.close()


class _RaceSafeClusterPipeline(AsyncClusterPipeline):
    """A Cluster pipeline whose connection races surface as a Redis ConnectionError. Not
    retried, unlike a single command: a pipeline is split by node, and another node's part may
    already have run."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except _CONNECTION_RACE_ERRORS as exc:
            raise _as_connection_error(exc) from exc


class _RaceSafeCluster(AsyncRedisCluster):
    """redis-py's asyncio Cluster client, with its connection races (above) retried once and
    then raised as the ConnectionError they are: the gateway then answers fail-open and its gate
    re-checks, where an AttributeError would have been a 500 and, in the gate's own loop, an end
    to recovery."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _CONNECTION_RACE_ERRORS:
            # Raised while connecting or writing (the reading side raises redis's own
            # ConnectionError), so the command never reached Redis: one more try, on a fresh
            # connection, is safe even for a script that counts.
            pass
        try:
            return await super().execute_command(*args, **kwargs)
        except _CONNECTION_RACE_ERRORS as exc:
            raise _as_connection_error(exc) from exc

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> AsyncClusterPipeline:
        if shard_hint:  # redis-py's own check, as in RedisCluster.pipeline
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _RaceSafeClusterPipeline(self, transaction)  # type: ignore[abstract]


def _sentinel_kwargs(target: RedisTarget, timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
            "password": target.sentinel_password}  # fmt: skip


def async_redis(url: str, *, timeout: float, **options: Any) -> aioredis.Redis:
    """An asyncio client for whatever `url` names.

    Typed as `redis.asyncio.Redis`: RedisCluster offers the same commands the gateway uses
    (single-key commands, EVALSHA with keys in one slot, non-transactional pipelines, which it
    splits by node), and every multi-key call keeps its keys in one slot (docs/deployment.md)."""
    target = parse_redis_url(url)
    if target.mode == "standalone":
        return _RaceSafeRedis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, **options
        )
    node = _node_kwargs(target, timeout)
    if target.mode == "sentinel":
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs=_sentinel_kwargs(target, timeout),
            **node,
        )
        assert target.service is not None  # parse_redis_url requires it
        client = sentinel.master_for(
            target.service, redis_class=_AsyncSentinelManaged, db=target.db, **options
        )
        assert isinstance(client, _AsyncSentinelManaged)
        client.sentinels = list(sentinel.sentinels)
        return client
    options.pop("health_check_interval", None)
    cluster = _RaceSafeCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in target.nodes], **node, **options
    )
    return cast(aioredis.Redis, cluster)


def sync_redis(url: str, *, timeout: float, **options: Any) -> redis.Redis:
    """A blocking client for whatever `url` names (health checks, CLI, tests)."""
    target = parse_redis_url(url)
    if target.mode == "standalone":
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, **options
        )
    node = _node_kwargs(target, timeout)
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs=_sentinel_kwargs(target, timeout),
            **node,
        )
        assert target.service is not None
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service, redis_class=_SentinelManaged, db=target.db, **options
        )
        master.sentinels = list(sentinel.sentinels)
        return cast(redis.Redis, master)
    seeds = [ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
    cluster = RedisCluster(startup_nodes=seeds, **node, **options)
    return cast(redis.Redis, cluster)


def is_cluster(client: object) -> bool:
    """Whether `client` is a Redis Cluster client (whose pipelines cannot run scripts)."""
    return isinstance(client, AsyncRedisCluster | RedisCluster)


async def describe_primary(client: aioredis.Redis) -> str | None:
    """The address of the primary `client` talks to now ("host:port"; for a cluster, every
    primary's, comma-separated), for `/health`. None when it cannot be told."""
    if isinstance(client, AsyncRedisCluster):
        primaries = sorted(f"{n.host}:{n.port}" for n in client.get_primaries())
        return ",".join(primaries) or None
    pool = client.connection_pool
    get_master = getattr(pool, "get_master_address", None)  # a Sentinel pool
    if get_master is not None:
        host, port = await get_master()
        return f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
