"""Settings: one YAML file validated by pydantic, scalars overridable by ``FR_*`` env vars.

The environment is a parameter (``load_settings(path, environ)``), never read at import time, so
tests and the launcher inject it. pydantic-settings was considered; it reads ``os.environ`` itself
and its nested-delimiter rules cannot express the SPEC's ``FR_API_PORT`` (section + field joined by
one underscore while fields contain underscores), so the overlay in settings.py derives the exact
env names from the schema instead: ``FR_<SECTION>_<FIELD>`` for every scalar of a top-level
section.

The shared kernel, with services/errors.py: every folder may import it, and it imports only
services/errors.py. base.py holds the strict section model and the name rules, resilience.py and
sections.py the sections, settings.py the whole and its loading. Import from `services.config`.
"""

from __future__ import annotations

from services.config.base import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    MODEL_NAME_RE,
    ROOT,
    SESSION_ID_RE,
    TIERS,
    ModelName,
    Section,
)
from services.config.observability import (
    ALERT_EVENTS,
    AlertEvent,
    AlertSettings,
    TracingSettings,
    WebhookSettings,
)
from services.config.resilience import (
    BreakerSettings,
    BudgetSettings,
    CacheSettings,
    Chain,
    FallbackJitter,
    HealthSettings,
    HedgeSettings,
    ResilienceSettings,
    RetrySettings,
)
from services.config.sections import (
    ApiSettings,
    CapacityModel,
    CapacitySettings,
    DatabaseSettings,
    Deployment,
    KeyBudgetSettings,
    LedgerSettings,
    LogSettings,
    ModelSettings,
    Pricing,
    ProbeSettings,
    RateLimitSettings,
    RedisSettings,
    ScalerSettings,
    SessionSettings,
    Simulation,
    UpstreamSettings,
)
from services.config.settings import (
    ENV_OVERRIDES,
    Settings,
    effective_config,
    load_settings,
    redact_url,
)
from services.errors import ConfigError

__all__ = [
    "ALERT_EVENTS",
    "DEFAULT_CONFIG_PATH",
    "ENV_OVERRIDES",
    "ENV_PREFIX",
    "MODEL_NAME_RE",
    "ROOT",
    "SESSION_ID_RE",
    "TIERS",
    "AlertEvent",
    "AlertSettings",
    "ApiSettings",
    "BreakerSettings",
    "BudgetSettings",
    "CacheSettings",
    "CapacityModel",
    "CapacitySettings",
    "Chain",
    "ConfigError",
    "DatabaseSettings",
    "Deployment",
    "FallbackJitter",
    "HealthSettings",
    "HedgeSettings",
    "KeyBudgetSettings",
    "LedgerSettings",
    "LogSettings",
    "ModelName",
    "ModelSettings",
    "Pricing",
    "ProbeSettings",
    "RateLimitSettings",
    "RedisSettings",
    "ResilienceSettings",
    "RetrySettings",
    "ScalerSettings",
    "Section",
    "SessionSettings",
    "Settings",
    "Simulation",
    "TracingSettings",
    "UpstreamSettings",
    "WebhookSettings",
    "effective_config",
    "load_settings",
    "redact_url",
]
