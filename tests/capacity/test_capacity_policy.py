"""The planner's decision function on a fake clock: scale-up, threshold doubling and reset,
routing of new sessions, hysteresis, the quiet window."""

from __future__ import annotations

import pytest

from services.capacity.policy import (
    READY,
    STARTING,
    STOPPED,
    STOPPING,
    Action,
    Decision,
    Observation,
    PlannerState,
    Policy,
    decide,
    initial_state,
)

MB = 1_000_000
POLICY = Policy(initial_threshold=MB, up_ticks=2, down_ticks=6, quiet_window=60,
                drain_seconds=5, large_max_replicas=1)  # fmt: skip
TICK = 10.0


class Run:
    """Feeds observations one tick (10 s of fake time) apart and keeps every decision."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.now = 1000.0
        self.state: PlannerState = initial_state(policy, self.now)
        self.decisions: list[Decision] = []

    def tick(self, signal: float, *, small_requests: int = 0, large_ready: bool = False,
             small_ready: bool = False) -> Decision:  # fmt: skip
        self.now += TICK
        obs = Observation(signal, small_requests, large_ready, small_ready)
        decision = decide(self.state, obs, self.now, self.policy)
        self.state = decision.state
        self.decisions.append(decision)
        return decision

    @property
    def actions(self) -> list[Action]:
        return [a for d in self.decisions for a in d.actions]


def test_scale_up_needs_consecutive_ticks_over_the_threshold() -> None:
    run = Run()
    assert run.tick(1.5 * MB).actions == []  # one tick over: not yet
    decision = run.tick(1.5 * MB)
    assert decision.actions == [Action("small", 1), Action("large", 1)]
    assert run.state.small.state == STARTING and run.state.large.state == STARTING
    assert any("scaling up" in r for r in decision.reasons)
    assert run.state.threshold == MB, "not yet: the threshold doubles once the large model is up"
    run.tick(1.5 * MB, small_ready=True)
    assert run.state.threshold == MB
    decision = run.tick(1.5 * MB, small_ready=True, large_ready=True)
    assert run.state.threshold == 2 * MB and "threshold doubled to 2000000" in decision.reasons


def test_a_tick_under_the_threshold_resets_the_count() -> None:
    run = Run()
    for signal in (1.5 * MB, 0.5 * MB, 1.5 * MB, 0.5 * MB):
        run.tick(signal)
    assert run.actions == []


def test_new_sessions_go_to_small_while_large_warms_then_back_to_large() -> None:
    run = Run()
    run.tick(2 * MB)
    run.tick(2 * MB)
    assert run.state.target == "large", "small is not ready yet: nowhere better to send them"
    run.tick(2 * MB, small_ready=True)
    assert run.state.small.state == READY and run.state.target == "small"
    run.tick(2 * MB, small_ready=True)
    assert run.state.target == "small"
    decision = run.tick(2 * MB, small_ready=True, large_ready=True)
    assert run.state.large.state == READY and run.state.target == "large"
    assert "new sessions now go to the large model" in decision.reasons


def test_no_second_large_spin_up_while_one_warms_nor_beyond_max_replicas() -> None:
    run = Run()
    for _ in range(8):  # far over even the doubled threshold, for long
        run.tick(10 * MB, small_ready=True)
    assert [a for a in run.actions if a.role == "large"] == [Action("large", 1)]
    run.tick(10 * MB, small_ready=True, large_ready=True)
    for _ in range(8):
        run.tick(10 * MB, small_ready=True, large_ready=True)
    assert [a for a in run.actions if a.role == "large"] == [Action("large", 1)], "max is 1"


def test_more_large_replicas_need_the_doubled_threshold() -> None:
    run = Run(Policy(initial_threshold=MB, up_ticks=2, down_ticks=6, quiet_window=60,
                     large_max_replicas=3))  # fmt: skip
    run.tick(1.5 * MB)
    run.tick(1.5 * MB)  # first spin-up; the threshold doubles to 2 MB once it is up
    for _ in range(4):
        run.tick(1.5 * MB, small_ready=True, large_ready=True)
    assert [a.replicas for a in run.actions if a.role == "large"] == [1]
    run.tick(2.5 * MB, small_ready=True, large_ready=True)
    run.tick(2.5 * MB, small_ready=True, large_ready=True)
    assert [a.replicas for a in run.actions if a.role == "large"] == [1, 2]
    assert run.state.threshold == 2 * MB
    run.tick(2.5 * MB, small_ready=True, large_ready=True)  # the second one is up
    assert run.state.threshold == 4 * MB


def scaled_up(run: Run) -> None:
    run.tick(2 * MB)
    run.tick(2 * MB)
    run.tick(2 * MB, small_ready=True, large_ready=True)
    assert run.state.large.state == READY and run.state.small.state == READY


def test_scale_down_waits_for_low_load_and_a_quiet_small_model_then_resets() -> None:
    run = Run()
    scaled_up(run)
    # Load is low, but the small model still serves its pinned sessions: no scale-down.
    for _ in range(10):
        run.tick(0.1 * MB, small_requests=3, small_ready=True, large_ready=True)
    assert run.state.small.state == READY
    # Quiet from now on: needs 6 low ticks AND 60 s without small traffic.
    for _ in range(5):
        run.tick(0.1 * MB, small_ready=True, large_ready=True)
    assert run.state.small.state == READY, "5 ticks < scale_down_ticks"
    decision = run.tick(0.1 * MB, small_ready=True, large_ready=True)
    assert run.state.small.state == STOPPING and run.state.large.state == STOPPING
    assert decision.actions == [], "replicas leave routing before they are stopped"
    assert run.state.threshold == MB, "threshold reset to the initial value"
    assert run.state.target == "large"
    decision = run.tick(0.1 * MB, small_ready=True, large_ready=True)  # 10 s >= drain 5 s
    assert decision.actions == [Action("large", 0), Action("small", 0)]
    assert run.state.small.state == STOPPED and run.state.large.state == STOPPED


def test_signal_between_the_thresholds_neither_scales_up_nor_down() -> None:
    """Under the doubled threshold but over the initial one: capacity stays as it is."""
    run = Run()
    scaled_up(run)
    for _ in range(30):
        run.tick(1.5 * MB, small_ready=True, large_ready=True)
    assert run.state.small.state == READY and len(run.actions) == 2


def test_square_wave_load_does_not_flap() -> None:
    """Load alternating high and low, with any period up to the scale-down window, causes one
    scale-up and nothing else."""
    for period in (1, 2, 3, 5):
        run = Run()
        for i in range(60):
            high = (i // period) % 2 == 0
            run.tick(3 * MB if high else 0.1 * MB, small_requests=0 if not high else 5,
                     small_ready=i > 2, large_ready=i > 4)  # fmt: skip
        starts = [a for a in run.actions if a.replicas > 0]
        stops = [a for a in run.actions if a.replicas == 0]
        assert len(starts) <= 2 and stops == [], (period, run.actions)


@pytest.mark.parametrize(
    "drain_seconds",
    [pytest.param(60, id="still-draining"), pytest.param(15, id="drain-ends-on-the-scale-up-tick")],
)
def test_load_returning_during_the_drain_keeps_the_replicas(drain_seconds: float) -> None:
    """Scale-up while replicas drain (or on the very tick their drain ends) keeps them: no
    stop-then-start of cold replicas."""
    run = Run(Policy(initial_threshold=MB, up_ticks=2, down_ticks=6, quiet_window=60,
                     drain_seconds=drain_seconds))  # fmt: skip
    scaled_up(run)
    for _ in range(6):
        run.tick(0.1 * MB, small_ready=True, large_ready=True)
    assert run.state.small.state == STOPPING and run.state.large.state == STOPPING
    run.tick(2 * MB, small_ready=True, large_ready=True)  # 10 s into the drain
    decision = run.tick(2 * MB, small_ready=True, large_ready=True)  # 20 s: scale-up fires
    assert run.state.small.state == READY and run.state.large.state == READY
    assert decision.actions == [] and [a.replicas for a in run.actions] == [1, 1]
    assert "small model was draining: kept instead" in decision.reasons
