"""The whole configuration (`Settings`) and its loading: YAML, then `FR_*` overrides, then
validation; plus the redacted view `check-config` prints."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import Field, ValidationError, model_validator

from services.config.base import DEFAULT_CONFIG_PATH, ENV_PREFIX, TIERS, ModelName, Section
from services.config.observability import AlertSettings, TracingSettings
from services.config.resilience import (
    BreakerSettings,
    Chain,
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
    LedgerSettings,
    LogSettings,
    ModelSettings,
    RedisSettings,
    SessionSettings,
    UpstreamSettings,
)
from services.errors import ConfigError


class Settings(Section):
    """The whole configuration."""

    api: ApiSettings = ApiSettings()
    redis: RedisSettings = RedisSettings()
    log: LogSettings = LogSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    sessions: SessionSettings = SessionSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    database: DatabaseSettings = DatabaseSettings()
    ledger: LedgerSettings = LedgerSettings()
    capacity: CapacitySettings = CapacitySettings()
    alerts: AlertSettings = AlertSettings()
    otel: TracingSettings = TracingSettings()
    models: dict[ModelName, ModelSettings] = Field(min_length=1)
    chains: dict[ModelName, Chain] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for model, model_settings in self.models.items():
            for key in ("context_window_fallback", "content_policy_fallback"):
                for other in getattr(model_settings, key):
                    if other not in self.models or other == model:
                        raise ValueError(f"models.{model}.{key}: {other!r} is not another model "
                                         f"(models: {sorted(self.models)})")  # fmt: skip
        for chain, definition in self.chains.items():
            steps = definition.steps
            if chain in self.models:
                raise ValueError(f"chains.{chain}: the name is already a model")
            for step in steps:
                if step not in self.models and step not in TIERS:
                    raise ValueError(
                        f"chains.{chain}: {step!r} is neither a model nor a tier "
                        f"(models: {sorted(self.models)}; tiers: {sorted(TIERS)})"
                    )
        for model, deployment_name, deployment in self.deployments():
            if deployment.breaker:
                where = f"models.{model}.deployments ({deployment_name}).breaker"
                unknown = set(deployment.breaker) - set(BreakerSettings.model_fields)
                if unknown:
                    raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
                try:
                    self.breaker_policy(deployment)
                except ValidationError as exc:
                    raise ValueError(f"{where}: {exc.errors()[0]['msg']}") from None
        managed = {self.capacity.large.model, self.capacity.small.model}
        for model, model_settings in self.models.items():
            if not model_settings.deployments and not (self.capacity.enabled and model in managed):
                raise ValueError(
                    f"models.{model}: needs at least one deployment (only a model the capacity "
                    "planner manages may have none)"
                )
        if self.capacity.enabled:
            for role in ("large", "small"):
                managed_model: CapacityModel = getattr(self.capacity, role)
                if managed_model.model not in self.models:
                    raise ValueError(f"capacity.{role}.model: {managed_model.model!r} is not a "
                                     f"model (models: {sorted(self.models)})")  # fmt: skip
                chosen = managed_model.session_selector
                if chosen not in self.models and chosen not in self.chains:
                    raise ValueError(f"capacity.{role}.session_selector: {chosen!r} is neither "
                                     "a model nor a chain")  # fmt: skip
        selector = self.sessions.default_selector
        if selector not in self.models and selector not in self.chains:
            raise ValueError(
                f"sessions.default_selector: {selector!r} is neither a model nor a chain"
            )
        return self

    def chain_steps(self) -> dict[str, list[str]]:
        """Every chain's steps, by name."""
        return {name: chain.steps for name, chain in self.chains.items()}

    def retry_policy(self, selector: str) -> RetrySettings:
        """The chain's own retry policy, else resilience.retry (also for a model selector)."""
        chain = self.chains.get(selector)
        return chain.retry if chain is not None and chain.retry else self.resilience.retry

    def hedge_policy(self, selector: str) -> HedgeSettings:
        """The chain's hedging (off for a model selector)."""
        chain = self.chains.get(selector)
        return chain.hedge if chain is not None else HedgeSettings()

    def breaker_policy(self, deployment: Deployment) -> BreakerSettings:
        """The resilience.breaker settings with the deployment's own overrides applied."""
        if not deployment.breaker:
            return self.resilience.breaker
        merged = {**self.resilience.breaker.model_dump(), **deployment.breaker}
        return BreakerSettings.model_validate(merged)

    def deployments(self) -> list[tuple[str, str, Deployment]]:
        """Every (model, deployment name, deployment), names being `<model>:<index>` unless set."""
        return [
            (model, deployment.name or f"{model}:{index}", deployment)
            for model, model_settings in self.models.items()
            for index, deployment in enumerate(model_settings.deployments)
        ]


def _scalar_env_names() -> dict[str, tuple[str, str]]:
    """Map FR_SECTION_FIELD to (section, field) for every scalar of every top-level section."""
    names: dict[str, tuple[str, str]] = {}
    for section, field in Settings.model_fields.items():
        section_type = field.annotation
        if isinstance(section_type, type) and issubclass(section_type, Section):
            for name, info in section_type.model_fields.items():
                nested = info.annotation
                if isinstance(nested, type) and issubclass(nested, Section):
                    continue  # nested blocks are set in the file, not through one variable
                key = info.alias or name
                names[f"{ENV_PREFIX}{section.upper()}_{key.upper()}"] = (section, key)
    return names


ENV_OVERRIDES = _scalar_env_names()


def _format_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        origin = origins.get(loc[:2])
        source = f" (from {origin})" if origin else ""
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" = {_short(value)}"
        lines.append(f"  {where}{shown}{source}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load, overlay ``FR_*`` env vars on, and validate the configuration; raise ConfigError."""
    env = os.environ if environ is None else environ
    config_path = Path(path or env.get("FR_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path}: the top level must be a mapping")

    origins: dict[tuple[str, ...], str] = {}
    for env_name, (section, field) in ENV_OVERRIDES.items():
        if env_name in env:
            block = raw.setdefault(section, {})
            if not isinstance(block, dict):
                raise ConfigError(f"{section}: must be a mapping, got {_short(block)}")
            block[field] = env[env_name]
            origins[(section, field)] = env_name
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origins)) from exc


def redact_url(url: str) -> str:
    """Hide the password of a URL (redis://user:secret@host → redis://user:***@host), also of
    one naming several hosts (redis+sentinel://:secret@h1:26379,h2:26379/name) and of query
    parameters whose name says password or secret."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hosts}")
    if parts.query:
        query = [
            (name, "***" if re.search(r"password|secret", name, re.IGNORECASE) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def effective_config(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings as plain data with secrets redacted, for `check-config` and logs."""
    data = settings.model_dump(mode="json", by_alias=True)
    data["redis"]["url"] = redact_url(settings.redis.url)
    data["database"]["url"] = redact_url(settings.database.url)
    if settings.api.metrics_key:
        data["api"]["metrics_key"] = "***"
    for webhook in data["alerts"]["webhooks"]:
        if webhook.get("secret"):
            webhook["secret"] = "***"  # noqa: S105 - the redaction mark, not a password
    for model in data["models"].values():
        for deployment in model["deployments"]:
            key_env = deployment.get("api_key_env")
            if key_env:
                state = "set" if environ.get(key_env) else "NOT SET"
                deployment["api_key_env"] = f"{key_env} ({state})"
    return data
