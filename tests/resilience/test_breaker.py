"""Circuit breaker transitions on a fake clock, and the Lua script agreeing with them."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from services.config import BreakerSettings
from services.platform.redis_gate import RedisGate
from services.resilience import breaker
from services.resilience.breaker import CLOSED, HALF_OPEN, OPEN, Admission, BreakerState, Outcome
from services.resilience.breaker_store import BREAKER_LUA, BreakerStore, parse_reply, policy_args

DEFAULTS = BreakerSettings()


def fail(state: BreakerState, now: float, policy: BreakerSettings = DEFAULTS, **kw: object) -> BreakerState:  # fmt: skip
    return breaker.record(state, policy, now, Outcome.FAILURE, **kw)  # type: ignore[arg-type]


def succeed(state: BreakerState, now: float, policy: BreakerSettings = DEFAULTS, **kw: object) -> BreakerState:  # fmt: skip
    return breaker.record(state, policy, now, Outcome.SUCCESS, **kw)  # type: ignore[arg-type]


def test_opens_on_the_fifth_failure_with_defaults() -> None:
    """Under 100 % failure the default breaker is still closed after 4 calls and open after 5."""
    state = breaker.new_state(DEFAULTS)
    for call in range(1, 6):
        state, admission = breaker.admit(state, DEFAULTS, 100.0 + call)
        assert admission is Admission.ALLOW
        state = fail(state, 100.0 + call)
        assert state.state == (OPEN if call == 5 else CLOSED), call
    assert breaker.admit(state, DEFAULTS, 106.0)[1] is Admission.REJECT


def test_opens_on_failure_rate_once_minimum_calls_are_reached() -> None:
    """Alternating outcomes trip a 50 % rate breaker at the minimum call count, not before."""
    policy = BreakerSettings(consecutive_failures=100, minimum_calls=6, failure_rate=0.5)
    state = breaker.new_state(policy)
    for i in range(5):
        state = (fail if i % 2 == 0 else succeed)(state, 10.0 + i, policy)
        assert state.state == CLOSED  # at most 5 calls: below the minimum
    state = succeed(state, 15.0, policy)
    assert state.state == CLOSED  # 3 failures of 6, but the last call succeeded: no check
    state = fail(state, 16.0, policy)
    assert state.state == OPEN  # 4 of 7 failed


def test_old_failures_leave_the_window() -> None:
    """Failures older than the window no longer count towards the rate."""
    policy = BreakerSettings(consecutive_failures=100, minimum_calls=4, window_seconds=10)
    state = breaker.new_state(policy)
    for i in range(3):
        state = fail(state, 100.0 + i, policy)
    state = succeed(state, 103.0, policy)
    assert state.window(policy, 103.0) == (4, 3)
    assert state.window(policy, 125.0) == (0, 0)
    state = fail(state, 125.0, policy)
    assert state.state == CLOSED  # 1 failure in the current window


def test_success_resets_the_consecutive_count() -> None:
    """Four failures, a success, four failures: never five in a row, and the rate stays under 50 %."""
    policy = BreakerSettings(minimum_calls=100)
    state = breaker.new_state(policy)
    for now in range(4):
        state = fail(state, float(now), policy)
    state = succeed(state, 4.0, policy)
    assert state.consecutive_failures == 0
    for now in range(5, 9):
        state = fail(state, float(now), policy)
    assert state.state == CLOSED and state.consecutive_failures == 4


def tripped(policy: BreakerSettings, now: float) -> BreakerState:
    state = breaker.new_state(policy)
    for _ in range(policy.consecutive_failures):
        state = fail(state, now, policy)
    assert state.state == OPEN
    return state


def test_half_open_admits_exactly_the_configured_probes_and_closes_on_their_success() -> None:
    """After the wait, exactly `half_open_probes` calls get through; their successes close it."""
    policy = BreakerSettings(half_open_probes=3, open_jitter=0)
    state = tripped(policy, 0.0)
    assert breaker.admit(state, policy, 4.99)[1] is Admission.REJECT
    decisions = []
    for _ in range(5):
        state, admission = breaker.admit(state, policy, 5.0)
        decisions.append(admission)
    assert decisions == [Admission.PROBE] * 3 + [Admission.REJECT] * 2
    assert state.state == HALF_OPEN
    for i in range(3):
        assert state.state == HALF_OPEN, i
        state = succeed(state, 5.1, policy, probe=True)
    assert state.state == CLOSED and state.trips == 0


def test_open_wait_grows_on_repeated_trips_up_to_the_cap() -> None:
    """Each failed recovery doubles the wait: 5, 10, 20, ... capped at max_open_seconds."""
    policy = BreakerSettings(open_seconds=5, max_open_seconds=30, open_jitter=0)
    state = tripped(policy, 0.0)
    now, waits = 0.0, [state.open_until]
    for _ in range(4):
        now = state.open_until
        state, admission = breaker.admit(state, policy, now)
        assert admission is Admission.PROBE
        state = fail(state, now, policy, probe=True)
        waits.append(state.open_until - now)
    assert waits == [5, 10, 20, 30, 30]


def test_open_wait_jitter_stays_within_its_band() -> None:
    """Jitter moves the wait by at most open_jitter either way."""
    policy = BreakerSettings(open_seconds=10, open_jitter=0.2)
    assert breaker.open_wait(policy, 1, -1.0) == pytest.approx(8.0)
    assert breaker.open_wait(policy, 1, 1.0) == pytest.approx(12.0)
    assert breaker.open_wait(policy, 2, 0.0) == pytest.approx(20.0)


def test_half_open_cannot_get_stuck_when_probes_never_report() -> None:
    """Permits whose holders vanished are reclaimed after probe_timeout_seconds."""
    policy = BreakerSettings(half_open_probes=2, probe_timeout_seconds=30, open_jitter=0)
    state = tripped(policy, 0.0)
    state, first = breaker.admit(state, policy, 5.0)
    state, second = breaker.admit(state, policy, 5.0)
    assert (first, second) == (Admission.PROBE, Admission.PROBE)
    assert breaker.admit(state, policy, 34.9)[1] is Admission.REJECT
    state, again = breaker.admit(state, policy, 35.0)
    assert again is Admission.PROBE and state.probes == 1


def test_ignored_outcomes_move_nothing_but_free_a_probe_permit() -> None:
    """Client faults count for nothing; an ignored probe hands its permit back."""
    policy = BreakerSettings(half_open_probes=1, open_jitter=0)
    state = breaker.new_state(policy)
    for _ in range(20):
        state = breaker.record(state, policy, 1.0, Outcome.IGNORED)
    assert state.state == CLOSED and state.requests == 0
    state = tripped(policy, 0.0)
    state, _ = breaker.admit(state, policy, 5.0)
    assert breaker.admit(state, policy, 5.0)[1] is Admission.REJECT
    state = breaker.record(state, policy, 5.0, Outcome.IGNORED, probe=True)
    assert breaker.admit(state, policy, 5.0)[1] is Admission.PROBE


def test_late_results_from_before_the_trip_decide_nothing() -> None:
    """A success of a call admitted while closed does not close an open or half-open breaker."""
    policy = BreakerSettings(open_jitter=0)
    state = tripped(policy, 0.0)
    state = succeed(state, 1.0, policy)
    assert state.state == OPEN and state.successes == 1
    state, _ = breaker.admit(state, policy, 5.0)
    state = succeed(state, 5.0, policy)
    assert state.state == HALF_OPEN and state.probes == 1


def test_state_survives_its_redis_encoding() -> None:
    """to_fields/from_fields round-trip every field."""
    state = tripped(BreakerSettings(), 1700000000.125)
    again = BreakerState.from_fields(state.to_fields(), DEFAULTS.buckets)
    assert again.to_fields() == state.to_fields()


def test_a_mirror_never_takes_an_older_reply() -> None:
    """A stale reply (lower version of the same hash) is refused; a new generation is taken."""
    old = BreakerState(state="open", version=7, generation="g1")
    assert not breaker.newer(BreakerState(state="half-open", version=6, generation="g1"), old)
    assert breaker.newer(BreakerState(state="closed", version=7, generation="g1"), old)
    assert breaker.newer(BreakerState(state="closed", version=1, generation="g2"), old)
    assert breaker.newer(BreakerState(state="closed"), old)  # local state (Redis down)


async def test_out_of_order_replies_do_not_move_the_mirror_backwards(redis_url: str) -> None:
    """Two writes whose replies are applied in reverse order leave the mirror at the newer one,
    and only one transition is logged."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = BreakerStore(client, RedisGate(client), {"d": DEFAULTS}, prefix="mirror:")
        for _ in range(DEFAULTS.consecutive_failures):
            await store.record("d", Outcome.FAILURE)
        opened = store.state("d")
        assert opened.state == "open"
        stale = BreakerState.from_fields(
            {**opened.to_fields(), "state": "closed", "version": str(opened.version - 1)},
            DEFAULTS.buckets,
        )
        store._update("d", stale)  # a reply from before the trip, arriving late
        assert store.state("d").state == "open" and store.state("d").version == opened.version
    finally:
        await client.aclose()


def _time_to_close(policy: BreakerSettings, recovered_at: float, seed: int) -> tuple[float, int]:
    """Traffic every 100 ms against a deployment that fails until `recovered_at`: how long after
    recovery its breaker closes, and how many half-open probes reached it while it was down."""
    rng = random.Random(seed)
    state, now, probes = breaker.new_state(policy), 0.0, 0
    while now < recovered_at + 600:
        now = round(now + 0.1, 3)
        state, admission = breaker.admit(state, policy, now)
        if admission is Admission.REJECT:
            continue
        probe = admission is Admission.PROBE
        probes += probe and now < recovered_at
        ok = now >= recovered_at
        outcome = Outcome.SUCCESS if ok else Outcome.FAILURE
        state = breaker.record(state, policy, now, outcome, probe=probe, jitter=rng.uniform(-1, 1))
        if ok and state.state == CLOSED:
            return now - recovered_at, probes
    raise AssertionError("never closed")


def test_recovered_deployment_is_used_again_within_thirty_seconds() -> None:
    """Whenever in a long outage the deployment recovers, its breaker closes within 30 s of the
    recovery with the default policy (the open wait stops doubling at 20 s), while probes during
    a 5-minute outage stay a few per minute."""
    delays = [
        _time_to_close(BreakerSettings(), 60 + offset * 1.7, seed)[0]
        for seed, offset in enumerate(range(60))
    ]
    assert max(delays) <= 30, max(delays)
    _, probes = _time_to_close(BreakerSettings(), 300, seed=1)
    assert probes <= 2 * (300 // 16 + 1), probes
    # The old cap (120 s) left a recovered deployment unused for over a minute.
    old = max(_time_to_close(BreakerSettings(max_open_seconds=120), 60 + o * 1.7, o)[0]
              for o in range(60))  # fmt: skip
    assert old > 60


async def test_lua_script_and_python_agree_on_random_histories(redis_url: str) -> None:
    """The Redis script and the pure functions produce identical states on 6 x 300 random events."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script(BREAKER_LUA)
    seen: set[tuple[str, str]] = set()
    try:
        for seed in range(6):
            rng = random.Random(seed)
            policy = BreakerSettings(
                window_seconds=rng.choice([3, 10, 30]),
                buckets=rng.choice([1, 5, 10]),
                minimum_calls=rng.randint(1, 6),
                failure_rate=rng.choice([0.25, 0.5, 1.0]),
                consecutive_failures=rng.randint(1, 6),
                open_seconds=rng.choice([0.5, 1, 2]),
                max_open_seconds=rng.choice([2, 8]),
                half_open_probes=rng.randint(1, 3),
                probe_timeout_seconds=rng.choice([1, 5]),
            )
            key = f"parity:{seed}"
            state = breaker.new_state(policy)
            now = 1_700_000_000.0
            for _ in range(300):
                now = round(now + rng.choice([0, 0.001, 0.05, 0.3, 1.1, 4.0]), 3)
                op = rng.choice(["admit", "record", "record", "record", "sync", "reset"])
                outcome = rng.choice(list(Outcome))
                probe = state.state == HALF_OPEN and rng.random() < 0.7
                jitter = round(rng.uniform(-1, 1), 6)
                pending = rng.choice([0, 0, 0, 1, 3]) if op != "reset" else 0
                # A sync is a record with no outcome: only the pending successes are applied.
                sent_op, sent_outcome = ("record", "none") if op == "sync" else (op, outcome.value)
                args = [sent_op, f"{now:.3f}", sent_outcome, int(probe), jitter, 1, pending,
                        *policy_args(policy), "gen-a"]  # fmt: skip
                reply = await script(keys=[key], args=args)
                decision, shared = parse_reply(reply, policy.buckets)
                # Redis's own bookkeeping: one more version per write, the generation kept.
                assert (shared.version, shared.generation) == (state.version + 1, "gen-a")
                state.version, state.generation = shared.version, shared.generation
                expected = "none"
                if op == "reset":
                    state = breaker.reset(state, policy, now)
                else:
                    if pending:
                        state = breaker.record(state, policy, now, Outcome.SUCCESS, count=pending)
                    if op == "admit":
                        state, admission = breaker.admit(state, policy, now)
                        expected = admission.value
                    elif op == "record":
                        state = breaker.record(
                            state, policy, now, outcome, probe=probe, jitter=jitter
                        )
                # Redis keeps times to the millisecond; so does the model from here on.
                state = BreakerState.from_fields(state.to_fields(), policy.buckets)
                assert decision == expected, (seed, op)
                assert shared.to_fields() == state.to_fields(), (seed, op, now)
                seen.add((op, state.state))
    finally:
        await client.aclose()
    # The histories went through every state with every operation.
    assert {
        (op, st) for op in ("admit", "record", "sync") for st in (CLOSED, OPEN, HALF_OPEN)
    } <= seen
