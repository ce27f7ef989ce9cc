"""The circuit breaker of one deployment, as pure functions of (state, policy, now).

    closed --(failure rate over the window, or N consecutive failures)--> open
    open --(wait elapsed; the next admission)--> half-open
    half-open --(`half_open_probes` probe successes)--> closed
    half-open --(a probe fails)--> open, with the wait doubled (capped, jittered)

The window is a ring of `buckets` time buckets covering `window_seconds`, so old calls age out
without a log of timestamps. Half-open hands out at most `half_open_probes` permits at a time; a
permit that is never returned (its process died) is reclaimed after `probe_timeout_seconds`, so
half-open cannot get stuck. Results of calls admitted before a trip are counted in the totals but
move nothing.

`services/resilience/breaker_store.py` runs the same transitions atomically in Redis (a Lua
script kept in step with this module; tests/resilience/test_breaker.py runs both on the same
random histories). Randomness
comes in as an argument (`jitter` in [-1, 1]), time as `now`: nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import Enum

from services.config import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Admission(Enum):
    """What the breaker says to a call that wants to go through."""

    ALLOW = "allow"
    PROBE = "probe"
    REJECT = "reject"


class Outcome(Enum):
    """How a call ended, as the breaker counts it."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"  # a failure, also counted in `timeouts`
    # Neither: a client fault (4xx other than 408/429), a cancelled call, a deadline we hit.
    IGNORED = "ignored"


@dataclass(slots=True)
class BreakerState:
    """Everything the breaker remembers; also the shape of its Redis hash."""

    state: str = CLOSED
    open_until: float = 0.0
    trips: int = 0
    consecutive_failures: int = 0
    probes: int = 0
    probe_successes: int = 0
    probe_deadline: float = 0.0
    changed_at: float = 0.0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    # Bumped by every write in Redis (the Lua script), with a generation that changes when the
    # hash is created anew: a mirror never takes a reply older than what it already holds.
    version: int = 0
    generation: str = ""
    epochs: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    bucket_failures: list[int] = field(default_factory=list)

    def copy(self) -> BreakerState:
        """An independent copy (the bucket lists included)."""
        return replace(
            self,
            epochs=list(self.epochs),
            calls=list(self.calls),
            bucket_failures=list(self.bucket_failures),
        )

    def window(self, policy: BreakerSettings, now: float) -> tuple[int, int]:
        """(calls, failures) over the last `window_seconds`."""
        epoch = _epoch(policy, now)
        calls = failures = 0
        for i, bucket_epoch in enumerate(self.epochs):
            if epoch - bucket_epoch < policy.buckets:
                calls += self.calls[i]
                failures += self.bucket_failures[i]
        return calls, failures

    def to_fields(self) -> dict[str, str]:
        """The flat string mapping stored in Redis."""
        out = {
            f.name: _fmt(getattr(self, f.name))
            for f in fields(self)
            if f.name not in {"epochs", "calls", "bucket_failures"}
        }
        for i, (epoch, calls, failures) in enumerate(
            zip(self.epochs, self.calls, self.bucket_failures, strict=True)
        ):
            out[f"e{i}"], out[f"c{i}"], out[f"f{i}"] = str(epoch), str(calls), str(failures)
        return out

    @classmethod
    def from_fields(cls, data: dict[str, str], buckets: int) -> BreakerState:
        """Rebuild from the Redis hash (missing fields take their defaults)."""
        state = cls(
            epochs=[int(float(data.get(f"e{i}", -1))) for i in range(buckets)],
            calls=[int(float(data.get(f"c{i}", 0))) for i in range(buckets)],
            bucket_failures=[int(float(data.get(f"f{i}", 0))) for i in range(buckets)],
        )
        for f in fields(cls):
            if f.name in data and f.name not in {"epochs", "calls", "bucket_failures"}:
                kind = type(getattr(state, f.name))
                raw = data[f.name]
                setattr(state, f.name, raw if kind is str else kind(float(raw)))
        return state


def newer(new: BreakerState, old: BreakerState) -> bool:
    """Whether `new` may replace `old` in a mirror: a later write of the same Redis hash, or a
    hash created anew (Redis restarted or flushed), or local state (no generation yet)."""
    if not new.generation or new.generation != old.generation:
        return True
    return new.version >= old.version


def _fmt(value: object) -> str:
    # Floats keep millisecond precision, like the Lua side (string.format("%.3f")).
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def new_state(policy: BreakerSettings) -> BreakerState:
    """A closed breaker with an empty window."""
    n = policy.buckets
    return BreakerState(epochs=[-1] * n, calls=[0] * n, bucket_failures=[0] * n)


def _epoch(policy: BreakerSettings, now: float) -> int:
    return math.floor(now / (policy.window_seconds / policy.buckets))


def open_wait(policy: BreakerSettings, trips: int, jitter: float) -> float:
    """How long the breaker stays open after its `trips`-th trip in a row (jitter in [-1, 1])."""
    base = min(policy.open_seconds * 2.0 ** (trips - 1), policy.max_open_seconds)
    return base * (1 + policy.open_jitter * jitter)


def admit(
    state: BreakerState, policy: BreakerSettings, now: float
) -> tuple[BreakerState, Admission]:
    """Let a call through, make it a half-open probe, or reject it."""
    if state.state == CLOSED:
        return state, Admission.ALLOW
    if state.state == OPEN:
        if now < state.open_until:
            return state, Admission.REJECT
        state = state.copy()
        state.state, state.changed_at = HALF_OPEN, now
        state.probes = state.probe_successes = 0
    else:
        state = state.copy()
    if state.probes >= policy.half_open_probes and now >= state.probe_deadline:
        state.probes = 0  # every permit outlived its timeout: their holders are gone
    if state.probes >= policy.half_open_probes:
        return state, Admission.REJECT
    state.probes += 1
    state.probe_deadline = now + policy.probe_timeout_seconds
    return state, Admission.PROBE


def record(
    state: BreakerState,
    policy: BreakerSettings,
    now: float,
    outcome: Outcome,
    *,
    probe: bool = False,
    jitter: float = 0.0,
    count: int = 1,
) -> BreakerState:
    """Count `count` calls that ended with `outcome` and apply the transition they cause."""
    state = state.copy()
    if outcome is Outcome.IGNORED:
        if probe and state.state == HALF_OPEN:
            state.probes = max(0, state.probes - 1)
        return state
    success = outcome is Outcome.SUCCESS
    state.requests += count
    if success:
        state.successes += count
    else:
        state.failures += count
        if outcome is Outcome.TIMEOUT:
            state.timeouts += count
    if state.state == HALF_OPEN and probe:
        state.probes = max(0, state.probes - 1)
        if not success:
            return _trip(state, policy, now, jitter)
        state.probe_successes += count
        return (
            _close(state, policy, now)
            if state.probe_successes >= policy.half_open_probes
            else state
        )
    if state.state != CLOSED:
        return state  # a call admitted before the trip: counted, but it decides nothing
    epoch = _epoch(policy, now)
    i = epoch % policy.buckets
    if state.epochs[i] != epoch:
        state.epochs[i], state.calls[i], state.bucket_failures[i] = epoch, 0, 0
    state.calls[i] += count
    if success:
        state.consecutive_failures = 0
        return state
    state.bucket_failures[i] += count
    state.consecutive_failures += count
    calls, failures = state.window(policy, now)
    if state.consecutive_failures >= policy.consecutive_failures or (
        calls >= policy.minimum_calls and failures >= policy.failure_rate * calls
    ):
        return _trip(state, policy, now, jitter)
    return state


def reset(state: BreakerState, policy: BreakerSettings, now: float) -> BreakerState:
    """Close by hand: a fresh window and wait, the lifetime totals kept."""
    return _close(state.copy(), policy, now)


def _trip(state: BreakerState, policy: BreakerSettings, now: float, jitter: float) -> BreakerState:
    state.trips += 1
    state.state, state.changed_at = OPEN, now
    state.open_until = now + open_wait(policy, state.trips, jitter)
    _clear(state, policy)
    return state


def _close(state: BreakerState, policy: BreakerSettings, now: float) -> BreakerState:
    state.state, state.changed_at, state.trips, state.open_until = CLOSED, now, 0, 0.0
    _clear(state, policy)
    return state


def _clear(state: BreakerState, policy: BreakerSettings) -> None:
    n = policy.buckets
    state.epochs, state.calls, state.bucket_failures = [-1] * n, [0] * n, [0] * n
    state.consecutive_failures = state.probes = state.probe_successes = 0
