"""What the capacity planner and the API processes share through Redis.

    <prefix>capacity:state      JSON, set by the planner every tick with a TTL: model states,
                                replica endpoints, the selector for new sessions, the threshold
                                and the last observation. Gone (expired) = no planner: the API
                                falls back to the static config.
    <prefix>capacity:heartbeat  the acting planner's id and time, with the same TTL
    <prefix>capacity:lock       who may act (SET NX PX, renewed each tick by its owner)
    <prefix>capacity:load       hash the API processes increment: `requests`, `served:<model>`
    <prefix>capacity:inflight   hash: per API process, "<in-flight requests> <unix time>"
    <prefix>capacity:events     list, newest first: the acting planner's decisions and actions
                                as JSON {ts, message}, the last TIMELINE_LENGTH (the console's
                                timeline)

The API's side is `LoadReporter` (counts on the hot path in memory, one pipeline per sync) and
`PublishedState.parse`; the planner's side is `PlannerLock`, `read_load` and `publish`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.capacity.policy import READY, STARTING
from services.platform.lua import LuaScript
from services.routing.turn import TurnRecord

TIMELINE_LENGTH = 200

# Renew or release the lock only if we still own it (never someone else's, after an expiry).
RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def keys(prefix: str) -> dict[str, str]:
    """`<prefix>{capacity}:<name>`: the hash tag keeps them in one Redis Cluster slot, since
    `publish` writes several in one MULTI."""
    return {
        name: f"{prefix}{{capacity}}:{name}"
        for name in ("state", "heartbeat", "lock", "load", "inflight", "events")
    }


@dataclass(frozen=True, slots=True)
class Replica:
    """One planner-started endpoint of a model."""

    name: str  # the deployment name the router, breakers and ledger use
    base_url: str
    ready: bool


@dataclass(frozen=True, slots=True)
class PublishedModel:
    role: str  # large | small
    state: str  # stopped | starting | ready | stopping
    replicas: list[Replica] = field(default_factory=list)
    problem: str | None = None  # why its scaler cannot start what is wanted (it gave up)

    def routable(self) -> list[Replica]:
        """Ready replicas of a model that is not being drained."""
        if self.state not in (READY, STARTING):
            return []
        return [r for r in self.replicas if r.ready]


@dataclass(frozen=True, slots=True)
class PublishedState:
    """The planner's view, as the API reads it."""

    planner: str
    updated: float
    target_selector: str
    target_role: str
    threshold: float
    signal: str
    observed: dict[str, float]
    models: dict[str, PublishedModel]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @staticmethod
    def parse(raw: bytes | str | None) -> PublishedState | None:
        """The state from Redis, or None if absent or not understood (then: static config)."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            models = {
                name: PublishedModel(
                    m["role"], m["state"], [Replica(**r) for r in m["replicas"]], m.get("problem")
                )
                for name, m in data.pop("models").items()
            }
            return PublishedState(**data, models=models)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None


async def publish(
    redis: aioredis.Redis,
    prefix: str,
    state: PublishedState,
    ttl_seconds: float,
    events: Sequence[str] = (),
) -> None:
    """The state and heartbeat, and this tick's decisions onto the timeline, in one round trip."""
    k = keys(prefix)
    ttl_ms = max(1, int(ttl_seconds * 1000))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(k["state"], state.to_json(), px=ttl_ms)
        pipe.set(k["heartbeat"], orjson.dumps({"planner": state.planner, "at": state.updated}),
                 px=ttl_ms)  # fmt: skip
        if events:
            pipe.lpush(k["events"], *(orjson.dumps({"ts": state.updated, "message": e})
                                      for e in events))  # fmt: skip
            pipe.ltrim(k["events"], 0, TIMELINE_LENGTH - 1)
        await pipe.execute()


async def read_timeline(redis: aioredis.Redis, prefix: str, limit: int) -> list[dict[str, Any]]:
    """The planner's latest decisions, newest first (entries that do not parse are skipped)."""
    raw: list[bytes | str] = await redis.lrange(keys(prefix)["events"], 0, limit - 1)
    out = []
    for item in raw:
        try:
            event = orjson.loads(item)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("message"), str):
            out.append({"ts": float(event.get("ts") or 0), "message": event["message"]})
    return out


async def read_state(redis: aioredis.Redis, prefix: str) -> PublishedState | None:
    raw: bytes | str | None = await redis.get(keys(prefix)["state"])
    return PublishedState.parse(raw)


class PlannerLock:
    """One acting planner at a time: the others stand by and take over when its lock expires."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._key = keys(prefix)["lock"]
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = LuaScript(redis, RENEW_LUA)
        self._release = LuaScript(redis, RELEASE_LUA)

    async def hold(self) -> bool:
        """Take the lock if free, renew it if ours; whether we may act this tick."""
        if await self._redis.set(self._key, self.owner, nx=True, px=self._ttl_ms):
            return True
        return bool(await self._renew(keys=[self._key], args=[self.owner, self._ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self._key], args=[self.owner])


@dataclass(frozen=True, slots=True)
class Load:
    """The API processes' counters, summed."""

    requests: int
    served: dict[str, int]
    inflight: int


async def read_load(redis: aioredis.Redis, prefix: str, *, now: float, stale_after: float) -> Load:
    """The shared counters; in-flight counts of processes silent for `stale_after` are ignored
    (a killed worker must not look busy forever)."""
    k = keys(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(k["load"])
        pipe.hgetall(k["inflight"])
        counters, inflight_rows = await pipe.execute()
    decoded = {_text(key): int(value) for key, value in counters.items()}
    inflight = 0
    for raw in inflight_rows.values():
        count, at = _text(raw).split()
        if now - float(at) <= stale_after:
            inflight += int(count)
    served = {key[7:]: value for key, value in decoded.items() if key.startswith("served:")}
    return Load(decoded.get("requests", 0), served, inflight)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LoadReporter:
    """The API side: counts requests in memory (no Redis on the hot path) and publishes them on
    the sync interval."""

    def __init__(self, prefix: str) -> None:
        self._keys = keys(prefix)
        self._process = f"{os.uname().nodename}:{os.getpid()}"
        self.inflight = 0
        self._requests = 0
        self._served: dict[str, int] = {}

    def turn_started(self) -> None:
        """A chat turn is in flight (the planner's `inflight` signal)."""
        self.inflight += 1

    def turn_finished(self, turn: TurnRecord) -> None:
        """A chat turn ended: counted, and by the model that answered it, if one did."""
        self.inflight -= 1
        self._requests += 1
        if turn.answered:
            self._served[turn.model] = self._served.get(turn.model, 0) + 1

    async def flush(self, redis: aioredis.Redis) -> None:
        """Add this interval's counts to the shared hash; raises on a Redis error (kept for the
        next flush: the counts are only cleared after the write)."""
        requests, served = self._requests, dict(self._served)
        async with redis.pipeline(transaction=False) as pipe:
            if requests:
                pipe.hincrby(self._keys["load"], "requests", requests)
            for model, count in served.items():
                pipe.hincrby(self._keys["load"], f"served:{model}", count)
            pipe.hset(self._keys["inflight"], self._process, f"{self.inflight} {time.time():.3f}")
            await pipe.execute()
        self._requests -= requests
        for model, count in served.items():
            self._served[model] -= count
