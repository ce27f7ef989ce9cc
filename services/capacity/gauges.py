"""The capacity planner's state as Prometheus gauges, as this API process last read it from
Redis (every worker reads the same key, so the multiprocess view is the max)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from services.capacity.policy import READY, STARTING, STOPPED, STOPPING
from services.capacity.state import PublishedState


class PlannerGauges:
    """capacity_planner_up, capacity_model_state, capacity_replicas, capacity_threshold,
    capacity_signal and capacity_routing_target, in the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "capacity_planner_up", "1 while a capacity planner publishes its state.",
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_state = Gauge(
            "capacity_model_state", "1 for the state each managed model is in.",
            ["model", "state"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.replicas = Gauge(
            "capacity_replicas", "Planner-started replicas, by readiness.",
            ["model", "ready"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.threshold = Gauge(
            "capacity_threshold", "Current scale-up threshold, in the signal's unit.",
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.signal = Gauge(
            "capacity_signal", "Last observed value of each planner signal.",
            ["signal"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.target = Gauge(
            "capacity_routing_target", "1 for the selector new sessions are pinned to.",
            ["selector"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self._targets: set[str] = set()

    def show(self, state: PublishedState | None) -> None:
        """Mirror the planner's published state (None: no planner alive)."""
        self.up.set(0 if state is None else 1)
        if state is None:
            return
        for model, entry in state.models.items():
            for name in (STOPPED, STARTING, READY, STOPPING):
                self.model_state.labels(model, name).set(1 if entry.state == name else 0)
            ready = sum(r.ready for r in entry.replicas)
            self.replicas.labels(model, "true").set(ready)
            self.replicas.labels(model, "false").set(len(entry.replicas) - ready)
        self.threshold.set(state.threshold)
        for name, value in state.observed.items():
            self.signal.labels(name).set(value)
        for selector in {state.target_selector, *self._targets}:
            self.target.labels(selector).set(1 if selector == state.target_selector else 0)
        self._targets.add(state.target_selector)
