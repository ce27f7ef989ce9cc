"""Every deployment's circuit breaker, shared by all API processes through Redis.

Redis holds the truth: one hash per deployment, changed only by the Lua script below, which runs
the transitions of `services/resilience/breaker.py` atomically (so two processes cannot both
take the last half-open permit). Each process keeps a mirror of every hash, and the hot path
reads the mirror:

- a closed breaker admits with no I/O and a success is only counted locally (`pending`), then
  sent in the next sync or with the next failure, whichever comes first;
- an open breaker still waiting rejects with no I/O;
- failures, probe results and half-open admissions go to Redis at once.

`sync` (every `resilience.sync_interval_seconds`, and before `/circuit-breakers` answers) sends
the pending successes and refreshes the mirror, which is how a breaker tripped by one process
reaches the others. While Redis is down (see `RedisGate`) the same transitions run on the mirror
alone, and the first sync after recovery makes Redis the truth again.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from loguru import logger

from services.config import BreakerSettings
from services.platform.lua import LuaScript
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.platform.redis_topology import is_cluster
from services.resilience import breaker
from services.resilience.breaker import CLOSED, OPEN, Admission, BreakerState, Outcome

# The transitions of services/resilience/breaker.py, in Lua. Keep the two in step:
# tests/resilience/test_breaker.py replays random histories through both and compares every field.
BREAKER_LUA = """
local key = KEYS[1]
local op, now, outcome = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local probe, jitter = ARGV[4] == '1', tonumber(ARGV[5])
local count, pending = tonumber(ARGV[6]), tonumber(ARGV[7])
local fresh_generation = ARGV[18]
local P = {
  window = tonumber(ARGV[8]), buckets = tonumber(ARGV[9]), minimum_calls = tonumber(ARGV[10]),
  failure_rate = tonumber(ARGV[11]), consecutive = tonumber(ARGV[12]),
  open_seconds = tonumber(ARGV[13]), max_open = tonumber(ARGV[14]),
  open_jitter = tonumber(ARGV[15]), probes = tonumber(ARGV[16]),
  probe_timeout = tonumber(ARGV[17]),
}
local FLOATS = {open_until = true, probe_deadline = true, changed_at = true}
local INTS = {'trips', 'consecutive_failures', 'probes', 'probe_successes', 'requests',
              'successes', 'failures', 'timeouts', 'version'}

local raw = redis.call('HGETALL', key)
local h = {}
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local function num(name, default)
  local v = h[name]
  if v == nil then return default end
  return tonumber(v)
end
local s = {state = h['state'] or 'closed', open_until = num('open_until', 0),
           probe_deadline = num('probe_deadline', 0), changed_at = num('changed_at', 0)}
for _, name in ipairs(INTS) do s[name] = num(name, 0) end
local E, C, F = {}, {}, {}
for i = 0, P.buckets - 1 do
  E[i] = num('e' .. i, -1); C[i] = num('c' .. i, 0); F[i] = num('f' .. i, 0)
end

local function epoch_of(t) return math.floor(t / (P.window / P.buckets)) end
local function clear()
  for i = 0, P.buckets - 1 do E[i] = -1; C[i] = 0; F[i] = 0 end
  s.consecutive_failures = 0; s.probes = 0; s.probe_successes = 0
end
local function trip()
  s.trips = s.trips + 1
  s.state = 'open'; s.changed_at = now
  local base = math.min(P.open_seconds * 2 ^ (s.trips - 1), P.max_open)
  s.open_until = now + base * (1 + P.open_jitter * jitter)
  clear()
end
local function close()
  s.state = 'closed'; s.changed_at = now; s.trips = 0; s.open_until = 0
  clear()
end
local function record(result, is_probe, n)
  if result == 'ignored' then
    if is_probe and s.state == 'half-open' then s.probes = math.max(0, s.probes - 1) end
    return
  end
  local success = result == 'success'
  s.requests = s.requests + n
  if success then s.successes = s.successes + n else s.failures = s.failures + n end
  if result == 'timeout' then s.timeouts = s.timeouts + n end
  if s.state == 'half-open' and is_probe then
    s.probes = math.max(0, s.probes - 1)
    if not success then trip(); return end
    s.probe_successes = s.probe_successes + n
    if s.probe_successes >= P.probes then close() end
    return
  end
  if s.state ~= 'closed' then return end
  local epoch = epoch_of(now)
  local i = epoch % P.buckets
  if E[i] ~= epoch then E[i] = epoch; C[i] = 0; F[i] = 0 end
  C[i] = C[i] + n
  if success then s.consecutive_failures = 0; return end
  F[i] = F[i] + n
  s.consecutive_failures = s.consecutive_failures + n
  local calls, failures = 0, 0
  for j = 0, P.buckets - 1 do
    if epoch - E[j] < P.buckets then calls = calls + C[j]; failures = failures + F[j] end
  end
  if s.consecutive_failures >= P.consecutive or
     (calls >= P.minimum_calls and failures >= P.failure_rate * calls) then
    trip()
  end
end
local function admit()
  if s.state == 'closed' then return 'allow' end
  if s.state == 'open' then
    if now < s.open_until then return 'reject' end
    s.state = 'half-open'; s.changed_at = now; s.probes = 0; s.probe_successes = 0
  end
  if s.probes >= P.probes and now >= s.probe_deadline then s.probes = 0 end
  if s.probes >= P.probes then return 'reject' end
  s.probes = s.probes + 1
  s.probe_deadline = now + P.probe_timeout
  return 'probe'
end

-- Every write is a new version; a hash created anew gets a new generation, so that a mirror
-- holding a newer version of a lost hash still takes this one.
s.version = s.version + 1
local generation = h['generation'] or fresh_generation

local decision = 'none'
if op == 'reset' then
  close()
else
  if pending > 0 then record('success', false, pending) end
  if op == 'admit' then decision = admit()
  elseif outcome ~= 'none' then record(outcome, probe, count) end
end

local out = {'state', s.state, 'generation', generation}
for name, _ in pairs(FLOATS) do
  table.insert(out, name); table.insert(out, string.format('%.3f', s[name]))
end
for _, name in ipairs(INTS) do
  table.insert(out, name); table.insert(out, string.format('%d', s[name]))
end
for i = 0, P.buckets - 1 do
  table.insert(out, 'e' .. i); table.insert(out, string.format('%d', E[i]))
  table.insert(out, 'c' .. i); table.insert(out, string.format('%d', C[i]))
  table.insert(out, 'f' .. i); table.insert(out, string.format('%d', F[i]))
end
redis.call('HSET', key, unpack(out))
table.insert(out, 1, decision)
return out
"""


def policy_args(policy: BreakerSettings) -> list[Any]:
    """The policy as the script's trailing arguments."""
    return [
        policy.window_seconds, policy.buckets, policy.minimum_calls, policy.failure_rate,
        policy.consecutive_failures, policy.open_seconds, policy.max_open_seconds,
        policy.open_jitter, policy.half_open_probes, policy.probe_timeout_seconds,
    ]  # fmt: skip


def parse_reply(reply: list[Any], buckets: int) -> tuple[str, BreakerState]:
    """(decision, state) from the script's reply: the decision, then field/value pairs."""
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    data = dict(zip(items[1::2], items[2::2], strict=True))
    return items[0], BreakerState.from_fields(data, buckets)


class BreakerStore:
    """The breakers of every deployment: a local mirror in front of the shared Redis state."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        policies: Mapping[str, BreakerSettings],
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._policies = dict(policies)
        self._prefix = f"{prefix}breaker:"
        # Wall-clock time: every process compares it with deadlines written by the others.
        self._clock = clock
        self._rng = rng or random.Random()
        self._script = LuaScript(redis, BREAKER_LUA)
        self._generation = uuid.uuid4().hex[:12]  # used only if this process creates the hash
        self._states = {name: breaker.new_state(p) for name, p in self._policies.items()}
        self._pending = dict.fromkeys(self._policies, 0)
        self.rejections = dict.fromkeys(self._policies, 0)
        # Told of every change of state this process sees: (name, old, new, changed_at, trips).
        self.on_change: Callable[[str, str, str, float, int], None] | None = None
        # When this process began to watch each breaker: its uptime's start until it changes.
        self.watched_since = dict.fromkeys(self._policies, clock())
        # Planner replicas that were stopped: out of the views and the syncs, their Redis key
        # deleted; their local state is kept so that a call still in flight can end cleanly.
        self._retired: set[str] = set()

    def add(self, name: str, policy: BreakerSettings) -> None:
        """A deployment that appeared at run time (a capacity-planner replica)."""
        self._retired.discard(name)
        if name not in self._policies:
            self._policies[name] = policy
            self._states[name] = breaker.new_state(policy)
            self._pending[name] = 0
            self.rejections[name] = 0
            self.watched_since[name] = self._clock()

    async def retire(self, name: str) -> None:
        """A run-time deployment that is gone: it leaves the views and Redis."""
        if name not in self._policies or name in self._retired:
            return
        self._retired.add(name)
        if self._gate.available:
            try:
                await self._redis.delete(self._prefix + name)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)

    @property
    def names(self) -> list[str]:
        """The deployments with a breaker (stopped planner replicas excluded)."""
        return [name for name in self._policies if name not in self._retired]

    def policy(self, name: str) -> BreakerSettings:
        """A deployment's breaker settings."""
        return self._policies[name]

    def state(self, name: str) -> BreakerState:
        """The mirror's view of a breaker (refreshed by `sync`)."""
        return self._states[name]

    def uptime(self, name: str) -> float:
        """Seconds the breaker has been closed (since it last closed, or since this process
        began to watch it if it never changed); 0 while open or half-open."""
        state = self._states[name]
        if state.state != CLOSED:
            return 0.0
        since = state.changed_at or self.watched_since[name]
        return max(0.0, self._clock() - since)

    def usable(self, name: str) -> bool:
        """Whether a call would be let through now, without taking a half-open permit."""
        state = self._states[name]
        if state.state == CLOSED:
            return True
        if state.state == OPEN:
            return self._clock() >= state.open_until
        return state.probes < self._policies[name].half_open_probes

    async def admit(self, name: str) -> Admission:
        """Allow, probe or reject a call to `name`; only leaves the process when not closed."""
        state = self._states[name]
        if state.state == CLOSED:
            return Admission.ALLOW
        now = self._clock()
        if state.state == OPEN and now < state.open_until:
            self.rejections[name] += 1
            return Admission.REJECT
        decision = await self._shared(name, "admit", now)
        if decision is None:
            new, admission = breaker.admit(state, self._policies[name], now)
            self._update(name, new)
        else:
            admission = Admission(decision)
        if admission is Admission.REJECT:
            self.rejections[name] += 1
        return admission

    async def record(self, name: str, outcome: Outcome, *, probe: bool = False) -> None:
        """Count how a call ended; a closed breaker's successes wait for the next sync."""
        state = self._states[name]
        if outcome is Outcome.SUCCESS and not probe and state.state == CLOSED:
            self._pending[name] += 1
            if not self._gate.available:
                self._apply_locally(name, outcome, probe)
            return
        if await self._shared(name, "record", self._clock(), outcome, probe) is None:
            self._apply_locally(name, outcome, probe)

    async def reset(self, name: str) -> BreakerState:
        """Close a breaker by hand, everywhere."""
        if await self._shared(name, "reset", self._clock()) is None:
            self._update(
                name, breaker.reset(self._states[name], self._policies[name], self._clock())
            )
        logger.info("circuit breaker {} reset by hand", name)
        return self._states[name]

    async def sync(self) -> bool:
        """Send pending successes and refresh every mirror in one round trip."""
        if not self._gate.available:
            return False
        now = self._clock()
        sent = dict(self._pending)
        names = self.names
        try:
            if is_cluster(self._redis):
                # A cluster pipeline refuses EVALSHA; each call goes to its key's node, at once.
                replies = await asyncio.gather(*(
                    self._call(name, "record", now, None, False, sent[name]) for name in names
                ))  # fmt: skip
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        await self._call(name, "record", now, None, False, sent[name],
                                         client=pipe)  # fmt: skip
                    replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            return False
        for name, reply in zip(names, replies, strict=True):
            self._pending[name] -= sent[name]
            self._update(name, parse_reply(reply, self._policies[name].buckets)[1])
        return True

    async def run(self, interval: float) -> None:
        """Sync on an interval while the process runs."""
        while True:
            await asyncio.sleep(interval)
            await self.sync()

    # -- internals -----------------------------------------------------------------------------

    async def _shared(
        self, name: str, op: str, now: float, outcome: Outcome | None = None, probe: bool = False
    ) -> str | None:
        """Run `op` in Redis with this process's pending successes; None when Redis is down."""
        if not self._gate.available:
            return None
        pending = self._pending[name]
        try:
            reply = await self._call(name, op, now, outcome, probe, pending)
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            return None
        self._pending[name] -= pending
        decision, state = parse_reply(reply, self._policies[name].buckets)
        self._update(name, state)
        return decision

    async def _call(
        self,
        name: str,
        op: str,
        now: float,
        outcome: Outcome | None,
        probe: bool,
        pending: int,
        client: Any = None,
    ) -> Any:
        jitter = self._rng.uniform(-1.0, 1.0)
        args = [op, f"{now:.3f}", outcome.value if outcome else "none", int(probe), jitter, 1,
                pending, *policy_args(self._policies[name]), self._generation]  # fmt: skip
        return await self._script(keys=[self._prefix + name], args=args, client=client)

    def _apply_locally(self, name: str, outcome: Outcome, probe: bool) -> None:
        policy = self._policies[name]
        jitter = self._rng.uniform(-1.0, 1.0)
        new = breaker.record(
            self._states[name], policy, self._clock(), outcome, probe=probe, jitter=jitter
        )
        self._update(name, new)

    def _update(self, name: str, new: BreakerState) -> None:
        old = self._states[name]
        if not breaker.newer(new, old):
            return  # a reply that left Redis before the one already applied: stale
        self._states[name] = new
        if old.state != new.state:
            if new.state == OPEN:
                wait = max(0.0, new.open_until - self._clock())
                logger.warning(
                    "circuit breaker {}: {} -> open for {:.1f}s (trip {}, {} failures in total)",
                    name, old.state, wait, new.trips, new.failures,
                )  # fmt: skip
            else:
                logger.info("circuit breaker {}: {} -> {}", name, old.state, new.state)
            if self.on_change is not None:
                self.on_change(name, old.state, new.state, new.changed_at, new.trips)
