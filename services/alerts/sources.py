"""The events that parts of the gateway raise, as alerts: each function turns a part's own news
(plain values, so that the part need not know about alerts) into `AlertSender.emit` calls."""

from __future__ import annotations

from collections.abc import Callable

from services.alerts.events import Alert
from services.alerts.sender import AlertSender

BreakerHook = Callable[[str, str, str, float, int], None]
HealthHook = Callable[[str, bool, str | None], None]


def breaker_hook(alerts: AlertSender) -> BreakerHook:
    """`BreakerStore.on_change`: open and closed, once per transition across processes (every
    process that mirrors the breaker sees the same `changed_at`, written by the one that moved
    it). Half-open is a step of recovery, not news."""

    def changed(name: str, old: str, new: str, changed_at: float, trips: int) -> None:
        if new == "open":
            alerts.emit(Alert("breaker.open", name, f"circuit breaker of {name} opened ({old} -> "
                              f"open, trip {trips} in a row)", {"from": old, "trips": trips},
                              dedupe=f"breaker:{name}:open:{changed_at}"))  # fmt: skip
        elif new == "closed":
            alerts.emit(Alert("breaker.closed", name, f"circuit breaker of {name} closed ({old} "
                              "-> closed)", {"from": old},
                              dedupe=f"breaker:{name}:closed:{changed_at}"))  # fmt: skip

    return changed


def health_hook(alerts: AlertSender) -> HealthHook:
    """`HealthMonitor.on_change`: each process probes on its own, so the same news is claimed
    once per deployment and state for `alerts.dedupe_seconds`."""

    def changed(name: str, healthy: bool, detail: str | None) -> None:
        if healthy:
            alerts.emit(Alert("deployment.healthy", name, f"deployment {name} is healthy again",
                              dedupe=f"health:{name}:healthy"))  # fmt: skip
        else:
            message = f"deployment {name} is unhealthy: its health probes fail ({detail})"
            alerts.emit(Alert("deployment.unhealthy", name, message, {"probe_error": detail},
                              dedupe=f"health:{name}:unhealthy"))  # fmt: skip

    return changed
