"""The capacity planner's decisions: a pure function of (state, observation, now).

Two models are managed. The *large* one is slow to start (minutes) and is what sessions should
use; the *small* one starts in seconds and hides the large one's cold start:

    load over the threshold for `up_ticks` ticks in a row
        -> start the small model and one more large replica; double the threshold
    small ready while the large one warms
        -> new sessions are pinned to the small model's selector
    large ready
        -> new sessions go back to the large model's selector (existing pins are untouched)
    load under the *initial* threshold for `down_ticks` ticks and no small-model traffic for
    `quiet_window` seconds
        -> both models' planner replicas leave routing (`stopping`), are stopped after
           `drain_seconds`, and the threshold is reset

Scale-down needs more consecutive ticks than scale-up and a quiet window besides, so a load
that oscillates around the threshold cannot make the planner flap. Nothing here does I/O or
reads a clock: `services/capacity/planner.py` observes, calls `decide`, and carries out the
actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

STOPPED, STARTING, READY, STOPPING = "stopped", "starting", "ready", "stopping"
Role = Literal["large", "small"]
ROLES: tuple[Role, Role] = ("large", "small")


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of `capacity:` that decisions depend on."""

    initial_threshold: float
    up_ticks: int = 2
    down_ticks: int = 6
    quiet_window: float = 120.0
    drain_seconds: float = 5.0
    large_max_replicas: int = 1
    small_max_replicas: int = 1


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One managed model: its lifecycle state and how many planner replicas it should have."""

    state: str = STOPPED
    replicas: int = 0
    since: float = 0.0  # when `state` was entered


@dataclass(frozen=True, slots=True)
class PlannerState:
    """Everything the next decision depends on."""

    threshold: float
    large: ModelStatus = ModelStatus()
    small: ModelStatus = ModelStatus()
    target: Role = "large"  # whose session selector new sessions get
    above: int = 0  # consecutive ticks with the signal over `threshold`
    below: int = 0  # consecutive ticks with the signal under the initial threshold
    small_last_traffic: float = 0.0

    def model(self, role: Role) -> ModelStatus:
        return self.large if role == "large" else self.small


@dataclass(frozen=True, slots=True)
class Observation:
    """What the planner saw this tick."""

    signal: float  # the configured signal: log bytes per interval, or requests per second
    small_requests: int = 0  # requests the small model answered since the last tick
    large_ready: bool = False  # every wanted large replica is ready
    small_ready: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """Something for the scalers to do: bring `role` to `replicas` planner replicas."""

    role: Role
    replicas: int


@dataclass(frozen=True, slots=True)
class Decision:
    state: PlannerState
    actions: list[Action] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def initial_state(policy: Policy, now: float) -> PlannerState:
    return PlannerState(threshold=policy.initial_threshold, small_last_traffic=now)


def advance_lifecycle(
    models: dict[Role, ModelStatus],
    obs: Observation,
    now: float,
    policy: Policy,
    above: int,
    actions: list[Action],
    reasons: list[str],
) -> bool:
    """Replicas that became ready; drained replicas that may now be stopped (not if this very
    tick scales up again: they are kept rather than stopped and restarted). Answers whether the
    large model came up this tick."""
    ready_now = {"large": obs.large_ready, "small": obs.small_ready}
    large_up = False
    for role in ROLES:
        status = models[role]
        if status.state == STARTING and ready_now[role]:
            models[role] = replace(status, state=READY, since=now)
            reasons.append(f"{role} model ready after {now - status.since:.0f}s")
            large_up |= role == "large"
        elif (
            status.state == STOPPING
            and now - status.since >= policy.drain_seconds
            and above < policy.up_ticks
        ):
            models[role] = ModelStatus(STOPPED, 0, now)
            actions.append(Action(role, 0))
            reasons.append(f"{role} model drained for {policy.drain_seconds:.0f}s: stopping it")
    return large_up


def decide(state: PlannerState, obs: Observation, now: float, policy: Policy) -> Decision:
    """The next state, the scaler actions and the reasons, for one tick."""
    actions: list[Action] = []
    reasons: list[str] = []
    models: dict[Role, ModelStatus] = {"large": state.large, "small": state.small}

    small_last_traffic = now if obs.small_requests > 0 else state.small_last_traffic
    above = state.above + 1 if obs.signal > state.threshold else 0
    below = state.below + 1 if obs.signal < policy.initial_threshold else 0
    threshold = state.threshold

    # 1. Lifecycle: replicas that became ready, drained ones stopped.
    if advance_lifecycle(models, obs, now, policy, above, actions, reasons):
        # Seed 003: the bar for the next large replica doubles once this one is up (not when it
        # was asked for: a spin-up that never comes up must not raise the bar).
        threshold *= 2
        reasons.append(f"threshold doubled to {threshold:.0f}")
    large, small = models["large"], models["small"]

    # 2. Scale up: never while a large replica is still warming (one cold start at a time).
    #    Replicas that are draining are simply kept; new ones only up to the maximum.
    can_grow = (
        large.state == STOPPING
        or small.state in (STOPPED, STOPPING)
        or large.replicas < policy.large_max_replicas
    )
    if above >= policy.up_ticks and large.state != STARTING and can_grow:
        reasons.append(
            f"signal {obs.signal:.0f} over threshold {threshold:.0f} for {above} ticks: scaling up"
        )
        if small.state == STOPPING:
            reasons.append("small model was draining: kept instead")
            small = replace(small, state=READY, since=now)
        elif small.state == STOPPED:
            wanted = min(max(small.replicas, 1), policy.small_max_replicas)
            small = ModelStatus(STARTING, wanted, now)
            actions.append(Action("small", wanted))
            small_last_traffic = now  # a fresh small model is not "quiet" yet
        if large.state == STOPPING:
            reasons.append("large model was draining: kept instead")
            large = replace(large, state=READY, since=now)
        elif large.replicas < policy.large_max_replicas:
            large = ModelStatus(STARTING, large.replicas + 1, now)
            actions.append(Action("large", large.replicas))
        above = 0
    # 3. Scale down: load low for long, the small model idle, nothing warming.
    elif (
        below >= policy.down_ticks
        and now - small_last_traffic >= policy.quiet_window
        and large.state != STARTING
        and small.state != STARTING
        and (large.state == READY or small.state == READY)
    ):
        reasons.append(
            f"signal under the initial threshold {policy.initial_threshold:.0f} for {below} "
            f"ticks and no small-model traffic for {now - small_last_traffic:.0f}s: scaling down"
        )
        if small.state == READY:
            small = ModelStatus(STOPPING, small.replicas, now)
        if large.state == READY:
            large = ModelStatus(STOPPING, large.replicas, now)
        if threshold != policy.initial_threshold:
            reasons.append(f"threshold reset to {policy.initial_threshold:.0f}")
        threshold = policy.initial_threshold
        below = 0

    # 4. Routing target: the small model only while it is ready and the large one warms.
    target: Role = "small" if large.state == STARTING and small.state == READY else "large"
    if target != state.target:
        reasons.append(f"new sessions now go to the {target} model")
    new = PlannerState(threshold, large, small, target, above, below, small_last_traffic)
    return Decision(new, actions, reasons)
