"""Settings: one YAML file validated by pydantic, scalars overridable by ``FR_*`` env vars.

The environment is a parameter (``load_settings(path, environ)``), never read at import time, so
tests and the launcher inject it. pydantic-settings was considered; it reads ``os.environ`` itself
and its nested-delimiter rules cannot express the SPEC's ``FR_API_PORT`` (section + field joined by
one underscore while fields contain underscores), so the overlay below derives the exact env names
from the schema instead: ``FR_<SECTION>_<FIELD>`` for every scalar of a top-level section.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from services.errors import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = ROOT / "config" / "default.yaml"
ENV_PREFIX = "FR_"

# Names that become part of Redis keys or URLs are checked against these before any I/O.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TIERS = frozenset({"cache", "degraded"})

ModelName = Annotated[str, Field(pattern=MODEL_NAME_RE.pattern)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RateLimitSettings(_Section):
    """Per API key, per minute, shared by every process through Redis (0 = no limit)."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)


class ApiSettings(_Section):
    """The HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_messages: int = Field(1000, ge=1)
    # One message's content (text parts summed), in characters.
    max_content_chars: int = Field(200_000, ge=1)
    max_header_bytes: int = Field(16_384, ge=1024)
    rate_limit: RateLimitSettings = RateLimitSettings()
    # SIGTERM: /readyz answers 503 at once; the listener closes this much later (load balancers
    # stop sending first); in-flight requests and streams then get `shutdown_grace_seconds`.
    drain_delay_seconds: float = Field(5.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)


class RedisSettings(_Section):
    """Where sessions, breakers and planner state live."""

    url: str = "redis://127.0.0.1:6379/0"
    # `main.py all` starts a private server when nothing answers at `url`.
    embedded: bool = True
    socket_timeout_seconds: float = Field(1.0, gt=0)
    health_interval_seconds: float = Field(5.0, gt=0)
    key_prefix: str = Field("fr:", pattern=r"^[A-Za-z0-9:_.-]{0,32}$")


class LogSettings(_Section):
    """Loguru sinks: console plus one rotating file per process kind."""

    dir: str = ".logs"
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # YAML key and env var say `json` (FR_LOG_JSON=1); the attribute cannot, pydantic owns `.json`.
    json_lines: bool = Field(False, alias="json")
    rotation_bytes: int = Field(10_000_000, ge=10_000)
    retention_days: int = Field(7, ge=1)
    # One INFO line per routed request: the capacity planner's log-growth signal depends on it.
    requests: bool = True


class UpstreamSettings(_Section):
    """The shared HTTP client pool used for every provider."""

    connect_timeout_seconds: float = Field(2.0, gt=0)
    # The longest one whole non-streamed attempt may take (never more than what is left of the
    # walk's `resilience.deadline_seconds`); liveness is the first-token and stall deadlines.
    request_timeout_seconds: float = Field(60.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    # One SSE line (or a whole JSON answer) longer than this is a protocol error, not a 500.
    max_line_bytes: int = Field(1_048_576, ge=1024)


class SessionSettings(_Section):
    """Session pinning."""

    default_selector: str = "large-model"
    ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)


class Simulation(_Section):
    """How a built-in simulated model server behaves (provider `simulated` only)."""

    latency_ms: float = Field(50.0, ge=0)
    tokens_per_second: float = Field(200.0, gt=0)
    cold_start_seconds: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    failure_status: int = Field(500, ge=400, le=599)
    response_tokens: int = Field(24, ge=1, le=4096)


class BreakerSettings(_Section):
    """A deployment's circuit breaker (see services/resilience/breaker.py for the state machine)."""

    # Opens when, over the last `window_seconds`, at least `minimum_calls` calls were made and
    # `failure_rate` of them failed, or after `consecutive_failures` failures in a row.
    window_seconds: float = Field(30.0, gt=0)
    buckets: int = Field(10, ge=1, le=60)
    minimum_calls: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, ge=1)
    # The open wait doubles on each trip that follows a failed recovery, up to the cap, +/- jitter.
    # The cap is what bounds how long a recovered deployment stays unused: with 20 s (+20 %
    # jitter) a half-open probe reaches it at most 24 s after it recovered, while probes stay
    # at two per 20 s per deployment however long the outage.
    open_seconds: float = Field(5.0, gt=0)
    max_open_seconds: float = Field(20.0, gt=0)
    open_jitter: float = Field(0.2, ge=0, lt=1)
    # Half-open admits this many concurrent probes; this many successes close the breaker.
    half_open_probes: int = Field(2, ge=1)
    # A probe that never reports back (its process died) frees its permit after this long.
    probe_timeout_seconds: float = Field(30.0, gt=0)
    # A call slower than this (time to first token when streaming) counts as a failure.
    slow_call_seconds: float | None = Field(None, gt=0)


class ProbeSettings(_Section):
    """How the health monitor probes a deployment (docs/resilience.md, "Probes")."""

    enabled: bool = True
    # A path starting with `/` is taken from the server's root (vLLM, llama.cpp and
    # `transformers serve` answer `/health` there); any other is appended to base_url. None: the
    # provider's model list (`{base_url}/models`, Anthropic's `/v1/models`).
    path: str | None = Field(None, pattern=r"^[^\s]*$", max_length=512)
    method: Literal["GET", "HEAD"] = "GET"
    # Statuses that prove the server is up. None: anything but 408, 429 and 5xx (a 401 or 404
    # still says the server answers; the chat call will say what is wrong).
    expect: list[int] | None = None


class Deployment(_Section):
    """One concrete upstream of a model."""

    provider: Literal["openai", "anthropic", "simulated"]
    base_url: str = Field(pattern=r"^https?://[^\s]+$")
    model: str = Field(min_length=1, max_length=256)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    name: str | None = Field(None, pattern=MODEL_NAME_RE.pattern)
    timeout_seconds: float | None = Field(None, gt=0)
    # Overrides of resilience.ttft_seconds / stall_seconds for this deployment (a reasoning
    # model that thinks for minutes before its first token needs a longer ttft).
    ttft_seconds: float | None = Field(None, gt=0)
    stall_seconds: float | None = Field(None, gt=0)
    # Whether the server continues a trailing assistant message (prefill) when a broken stream
    # is resumed on it. None: by provider (anthropic and simulated yes, openai no: OpenAI itself
    # does not; set true for vLLM or llama.cpp servers that do).
    supports_prefill: bool | None = None
    # Overrides of resilience.breaker for this deployment only (any subset of its keys).
    breaker: dict[str, Any] = Field(default_factory=dict)
    # The health monitor's probe: false turns it off, true or a mapping sets it up.
    probe: ProbeSettings = ProbeSettings()
    simulation: Simulation = Simulation()

    @model_validator(mode="before")
    @classmethod
    def _probe_flag(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("probe"), bool):
            data = {**data, "probe": {"enabled": data["probe"]}}
        return data

    @property
    def prefill(self) -> bool:
        """Whether a resumed stream may be continued here by assistant prefill."""
        if self.supports_prefill is not None:
            return self.supports_prefill
        return self.provider in {"anthropic", "simulated"}

    @model_validator(mode="after")
    def _simulated_is_local(self) -> Deployment:
        if self.provider == "simulated":
            parts = urlsplit(self.base_url)
            if parts.hostname not in {"127.0.0.1", "localhost", "::1"} or parts.port is None:
                raise ValueError(
                    f"a simulated deployment runs on this machine: base_url {self.base_url!r} "
                    "needs a loopback host and an explicit port"
                )
        return self

    @property
    def port(self) -> int:
        """The TCP port of base_url (explicit or the scheme's default)."""
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


class RetrySettings(_Section):
    """Retries of the same deployment after a retryable failure (connect, 408, 429, 5xx), with
    full-jitter backoff, before the walk fails over; a chain may carry its own (seed 001)."""

    max_retries: int = Field(2, ge=0, le=10)
    base_delay_seconds: float = Field(0.5, gt=0)
    max_delay_seconds: float = Field(5.0, gt=0)
    # A Retry-After longer than this is not waited for: the walk fails over at once.
    max_retry_after_seconds: float = Field(5.0, ge=0)


class HedgeSettings(_Section):
    """Hedged requests (opt-in per chain): when the first deployment tried has produced no
    first token after a delay, the same request starts on the next usable deployment; the first
    to produce a token wins and the other is cancelled. Each hedge spends a retry-budget token."""

    enabled: bool = False
    # The delay: fixed, or (`adaptive`) the deployment's own recent time-to-first-token p95,
    # never below `after_seconds` and never above `max_after_seconds`.
    after_seconds: float = Field(0.5, gt=0)
    adaptive: bool = False
    max_after_seconds: float = Field(5.0, gt=0)


class Chain(_Section):
    """A named fallback chain: its steps, and optionally its own retry policy and hedging.

    Written as a plain list (`default: [a, b, cache, degraded]`) or a mapping
    (`default: {steps: [...], retry: {max_retries: 3, base_delay_seconds: 1}}`)."""

    steps: list[str] = Field(min_length=1)
    retry: RetrySettings | None = None
    hedge: HedgeSettings = HedgeSettings()

    @model_validator(mode="before")
    @classmethod
    def _steps_only(cls, data: Any) -> Any:
        return {"steps": data} if isinstance(data, list) else data


class BudgetSettings(_Section):
    """The retry budget: retries and fallbacks as a share of recent requests (a token bucket)."""

    ratio: float = Field(0.2, ge=0, le=10)
    # A floor so that a quiet gateway can still retry: this many per second of the window.
    min_per_second: float = Field(10.0, ge=0)
    window_seconds: float = Field(10.0, gt=0, le=600)


class HealthSettings(_Section):
    """The health monitor's active probes and passive window."""

    enabled: bool = True
    probe_interval_seconds: float = Field(15.0, gt=0)
    probe_timeout_seconds: float = Field(5.0, gt=0)
    # This many failed probes in a row mark a deployment unhealthy (skipped); one success heals.
    unhealthy_after: int = Field(2, ge=1)
    window: int = Field(100, ge=1, le=100_000)


class CacheSettings(_Section):
    """The `cache` tier: successful non-streamed answers by exact request hash."""

    ttl_seconds: int = Field(3600, ge=1)
    max_entry_bytes: int = Field(262_144, ge=1024)
    flush_interval_seconds: float = Field(0.1, gt=0)


class FallbackJitter(_Section):
    """A random pause before each fallback (the seed design's 1-3 s); off by default."""

    enabled: bool = False
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(3.0, ge=0)


class ResilienceSettings(_Section):
    """How a request walks its chain (SPEC §6)."""

    # One deadline for the whole walk: every attempt, retry, backoff and jitter included.
    deadline_seconds: float = Field(30.0, gt=0)
    # Every attempt, streamed or not, must produce its first content token within this (connect,
    # response headers and first token included) or it fails over; never more than what is left
    # of the deadline. `stream_ttft_seconds` is its old name, still accepted.
    ttft_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("ttft_seconds", "stream_ttft_seconds")
    )
    # Once content flows, a silence longer than this between two chunks is a stall.
    stall_seconds: float = Field(10.0, gt=0)
    # A stream that breaks after content reached the client is continued on the next usable
    # deployment (docs/resilience.md), at most `max_continuations` times.
    stream_resume: bool = True
    max_continuations: int = Field(2, ge=0, le=5)
    degraded_message: str = Field(
        "The service is under heavy load or partly unavailable. Please try again shortly.",
        min_length=1,
        max_length=4000,
    )
    # How often each API process reconciles breakers and statistics with Redis.
    sync_interval_seconds: float = Field(0.5, gt=0)
    fallback_jitter: FallbackJitter = FallbackJitter()
    retry: RetrySettings = RetrySettings()
    budget: BudgetSettings = BudgetSettings()
    breaker: BreakerSettings = BreakerSettings()
    health: HealthSettings = HealthSettings()
    cache: CacheSettings = CacheSettings()


class Pricing(_Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class DatabaseSettings(_Section):
    """Where the usage ledger lives: SQLite (WAL mode) by default, PostgreSQL by URL."""

    # FR_DATABASE_URL; e.g. postgresql+asyncpg://user@host:5432/db. Relative SQLite paths are
    # relative to the working directory.
    url: str = Field("sqlite+aiosqlite:///.data/fallback_routing.db", min_length=1)


class LedgerSettings(_Section):
    """The usage ledger: memory buffer -> write-ahead log -> database."""

    enabled: bool = True
    wal_dir: str = ".data/wal"
    flush_interval_seconds: float = Field(1.0, gt=0)
    batch_size: int = Field(500, ge=1)
    # inline: each API process inserts its own batches. external: API processes only append and
    # seal WAL files, and `main.py ledger` inserts them, which keeps the insert's CPU off the
    # request path (docs/ledger.md); it needs that writer running. auto: external under
    # `main.py all` (which runs the writer), inline for a standalone `main.py api`.
    writer: Literal["auto", "inline", "external"] = "auto"
    # os.write reaches the kernel before the response does, which survives SIGKILL; fsync also
    # survives a power cut, at the price of a disk flush per request.
    fsync: bool = False
    health_snapshot_seconds: float = Field(60.0, gt=0)
    # Savings are what the same tokens would have cost on this model.
    reference_model: str = Field("gpt-4o", min_length=1, max_length=128)
    reference_pricing: Pricing = Pricing(input_per_mtok=2.5, output_per_mtok=10.0)


class ScalerSettings(_Section):
    """How the capacity planner starts and stops replicas of one model (docs/capacity.md)."""

    kind: Literal["simulated", "process", "kubernetes"] = "process"
    # The most planner-started replicas at once; each scale-up adds one, up to this.
    max_replicas: int = Field(1, ge=1, le=64)
    # simulated: how long a start takes. process: the cold start of the default command (the
    # built-in simulated model server). kubernetes: unused (readyReplicas says when).
    startup_seconds: float = Field(20.0, ge=0)
    # The replicas' upstream: how the API talks to them. `{port}` is the replica's port
    # (process), `{model}` the model name.
    provider: Literal["openai", "anthropic", "simulated"] = "simulated"
    base_url: str = Field("http://127.0.0.1:{port}/v1", pattern=r"^https?://[^\s]+$")
    upstream_model: str | None = Field(None, min_length=1, max_length=256)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # process: the command per replica (`{port}`, `{model}`, `{python}`, `{main}` substituted);
    # empty = the built-in simulated model server with `startup_seconds` of cold start.
    command: list[str] = Field(default_factory=list)
    health_url: str = Field("http://127.0.0.1:{port}/health", pattern=r"^https?://[^\s]+$")
    ready_timeout_seconds: float = Field(900.0, gt=0)
    stop_grace_seconds: float = Field(10.0, ge=0)
    # kubernetes: the Deployment to scale. The API server and credentials come from
    # `kubeconfig` if set, else the in-cluster service account.
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    deployment: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    kubeconfig: str | None = None

    @model_validator(mode="after")
    def _kubernetes_names_its_target(self) -> ScalerSettings:
        if self.kind == "kubernetes" and (self.deployment is None or "{port}" in self.base_url):
            raise ValueError(
                "a kubernetes scaler needs `deployment` (the Deployment to scale) and a "
                "`base_url` without {port} (its Service, e.g. http://large-model:8000/v1)"
            )
        return self


class CapacityModel(_Section):
    """One of the two models the planner manages."""

    model: str
    # New sessions are pinned to this selector while this model is the routing target.
    session_selector: str
    scaler: ScalerSettings = ScalerSettings()


class CapacitySettings(_Section):
    """The capacity planner, `python main.py capacity` (SPEC §7, docs/capacity.md)."""

    # Off unless a config turns it on (config/default.yaml does): it needs the two models.
    enabled: bool = False
    interval_seconds: float = Field(10.0, gt=0)
    # Which signal drives decisions (both are measured and reported): the API log's growth in
    # bytes per interval, or requests per second that the API processes publish in Redis.
    signal: Literal["log_growth", "request_rate"] = "log_growth"
    log_file: str | None = None  # default: <log.dir>/api_server.log
    log_threshold_bytes: int = Field(1_000_000, ge=1)
    request_rate_threshold: float = Field(50.0, gt=0)
    # Consecutive ticks over the threshold before scaling up; under the initial threshold
    # before scaling down (longer: no flapping).
    scale_up_ticks: int = Field(2, ge=1)
    scale_down_ticks: int = Field(6, ge=1)
    # Scale-down also needs the small model to have served nothing for this long.
    quiet_window_seconds: float = Field(120.0, ge=0)
    # Replicas leave routing this long before they are stopped (covers the API's sync).
    drain_seconds: float = Field(5.0, ge=0)
    # The planner's state in Redis expires this long after its last tick: a dead planner's
    # routing target stops applying.
    state_ttl_seconds: float = Field(30.0, gt=0)
    large: CapacityModel = CapacityModel(
        model="large-model",
        session_selector="default",
        scaler=ScalerSettings(startup_seconds=180.0),
    )
    small: CapacityModel = CapacityModel(
        model="small-model",
        session_selector="low-cost",
        scaler=ScalerSettings(startup_seconds=20.0),
    )

    @model_validator(mode="after")
    def _down_slower_than_up(self) -> CapacitySettings:
        if self.scale_down_ticks <= self.scale_up_ticks:
            raise ValueError("scale_down_ticks must be greater than scale_up_ticks (no flapping)")
        if self.large.model == self.small.model:
            raise ValueError("large.model and small.model must differ")
        return self


class ModelSettings(_Section):
    """A client-facing model and its deployments (none: the capacity planner supplies them)."""

    deployments: list[Deployment] = Field(default_factory=list)
    pricing: Pricing = Pricing()
    local: bool = False
    # Tokens of context; a request too long for this model goes to a model with a larger one.
    context_window: int | None = Field(None, ge=1)
    # Where a `context_length_exceeded` goes (in order); empty: the later chain steps with a
    # larger configured `context_window`.
    context_window_fallback: list[str] = Field(default_factory=list)
    # Where a content-policy rejection may go; empty: it is returned to the client as 400.
    content_policy_fallback: list[str] = Field(default_factory=list)


class Settings(_Section):
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
        if isinstance(section_type, type) and issubclass(section_type, _Section):
            for name, info in section_type.model_fields.items():
                nested = info.annotation
                if isinstance(nested, type) and issubclass(nested, _Section):
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
    """Hide the password of a URL (redis://user:secret@host → redis://user:***@host)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def effective_config(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings as plain data with secrets redacted, for `check-config` and logs."""
    data = settings.model_dump(mode="json", by_alias=True)
    data["redis"]["url"] = redact_url(settings.redis.url)
    data["database"]["url"] = redact_url(settings.database.url)
    for model in data["models"].values():
        for deployment in model["deployments"]:
            key_env = deployment.get("api_key_env")
            if key_env:
                state = "set" if environ.get(key_env) else "NOT SET"
                deployment["api_key_env"] = f"{key_env} ({state})"
    return data
