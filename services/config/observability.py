"""What the gateway tells the outside: alert webhooks (docs/alerts.md) and OpenTelemetry traces
(docs/tracing.md). Both are off until configured."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from services.config.base import Section

AlertEvent = Literal[
    "breaker.open",  # a deployment's breaker opened
    "breaker.closed",  # ... and closed again (recovered, or reset by hand)
    "deployment.unhealthy",  # its health probes failed
    "deployment.healthy",  # ... and pass again
    "planner.scale",  # the capacity planner scaled a model up or down
    "budget.threshold",  # a key spent `budget_percent` of its budget this period
    "cost.daily",  # the day's total cost passed `daily_cost_usd`
    "test",  # POST /api/admin/alerts/test
]
ALERT_EVENTS: tuple[str, ...] = AlertEvent.__args__  # type: ignore[attr-defined]


def every_event() -> list[AlertEvent | Literal["*"]]:
    return ["*"]


class WebhookSettings(Section):
    """One receiver: its URL, the events it wants (all by default) and the HMAC secret."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    events: list[AlertEvent | Literal["*"]] = Field(default_factory=every_event)
    # The body is signed with HMAC-SHA256 when a secret is set: inline, or read from an
    # environment variable (kept out of the config file).
    secret: str | None = Field(None, min_length=16, repr=False)
    secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events


class AlertSettings(Section):
    """Webhooks, and the thresholds that raise the budget and cost events."""

    webhooks: list[WebhookSettings] = Field(default_factory=list, max_length=20)
    budget_percent: float = Field(80.0, gt=0, le=100)  # of a key's budget, once per period
    daily_cost_usd: float | None = Field(None, gt=0)  # the day's total, once per UTC day
    cost_check_interval_seconds: float = Field(60.0, gt=0)
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(6, ge=1, le=20)  # 1 s, 2 s, 4 s ... between them, at most 60 s
    backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    queue_size: int = Field(1000, ge=1)  # alerts waiting to be sent; the oldest is dropped beyond
    # An occurrence seen by several API processes (a breaker all of them mirror) is sent once:
    # the first to claim it in Redis sends it; the claim lasts this long.
    dedupe_seconds: float = Field(300.0, gt=0)


class TracingSettings(Section):
    """OpenTelemetry: spans exported over OTLP/HTTP (protobuf) when an endpoint is set here or
    in OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""

    endpoint: str | None = Field(None, pattern=r"^https?://[^\s]+$", max_length=2048)
    service_name: str = Field("fallback-routing", min_length=1, max_length=128)
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of new traces; a sampled parent is followed

    @field_validator("endpoint")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value
