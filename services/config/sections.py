"""The settings sections other than resilience: API, Redis, logs, upstream client, sessions,
the simulated models, deployments and models, pricing, the ledger and the capacity planner."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from services.config.base import MODEL_NAME_RE, Section


class RateLimitSettings(Section):
    """Per API key, per minute, shared by every process through Redis (0 = no limit)."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)


class KeyBudgetSettings(Section):
    """Spending limits per API key and period, enforced in Redis (docs/security.md, "Budgets").

    Off unless enabled. A key's limit is the admin API's (`PUT /api/admin/budgets/{key_id}`),
    else `keys[key_id]`, else `default_usd`; without any, the key has no limit."""

    enabled: bool = False
    period: Literal["day", "month"] = "month"  # UTC calendar days or months
    default_usd: float | None = Field(None, ge=0)
    keys: dict[str, float] = Field(default_factory=dict)  # key id -> USD per period
    # What a request reserves for its answer when it names no max_tokens: the worst case it may
    # cost is held until the real cost is known.
    default_max_tokens: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _non_negative(self) -> KeyBudgetSettings:
        if any(value < 0 for value in self.keys.values()):
            raise ValueError("budgets.keys: every budget must be at least 0")
        return self


class ApiSettings(Section):
    """The HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_messages: int = Field(1000, ge=1)
    # One message's content (text parts summed), in characters.
    max_content_chars: int = Field(200_000, ge=1)
    max_header_bytes: int = Field(16_384, ge=1024)
    # A client has this long to send one whole request (head and body), from its first byte;
    # an idle connection, from the connection or the previous answer (services/api/http_guard.py).
    client_timeout_seconds: float = Field(30.0, gt=0)
    rate_limit: RateLimitSettings = RateLimitSettings()
    budgets: KeyBudgetSettings = KeyBudgetSettings()
    # SIGTERM: /readyz answers 503 at once; the listener closes this much later (load balancers
    # stop sending first); in-flight requests and streams then get `shutdown_grace_seconds`.
    drain_delay_seconds: float = Field(5.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # When set (best through FR_API_METRICS_KEY), /metrics needs `Authorization: Bearer <it>` or
    # the admin key: its totals say what every tenant spends (docs/security.md).
    metrics_key: str | None = Field(None, min_length=16, max_length=256, repr=False)


class RedisSettings(Section):
    """Where sessions, breakers and planner state live."""

    url: str = "redis://127.0.0.1:6379/0"
    # `main.py all` starts a private server when nothing answers at `url`.
    embedded: bool = True
    socket_timeout_seconds: float = Field(1.0, gt=0)
    health_interval_seconds: float = Field(5.0, gt=0)
    key_prefix: str = Field("fr:", pattern=r"^[A-Za-z0-9:_.-]{0,32}$")


class LogSettings(Section):
    """Loguru sinks: console plus one rotating file per process kind."""

    dir: str = ".logs"
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # YAML key and env var say `json` (FR_LOG_JSON=1); the attribute cannot, pydantic owns `.json`.
    json_lines: bool = Field(False, alias="json")
    rotation_bytes: int = Field(10_000_000, ge=10_000)
    retention_days: int = Field(7, ge=1)
    # One INFO line per routed request: the capacity planner's log-growth signal depends on it.
    requests: bool = True


class UpstreamSettings(Section):
    """The shared HTTP client pool used for every provider."""

    connect_timeout_seconds: float = Field(2.0, gt=0)
    # The longest one whole non-streamed attempt may take (never more than what is left of the
    # walk's `resilience.deadline_seconds`); liveness is the first-token and stall deadlines.
    request_timeout_seconds: float = Field(60.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    # One SSE line longer than this is a protocol error, not a 500.
    max_line_bytes: int = Field(1_048_576, ge=1024)
    # A whole answer (stream or JSON) larger than this fails over: one runaway upstream must not
    # take the process's memory with it.
    max_response_bytes: int = Field(10_485_760, ge=65_536)


class SessionSettings(Section):
    """Session pinning."""

    default_selector: str = "large-model"
    ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)
    # A turn whose pin this process read from Redis within this long is answered from memory
    # (no round trip); re-pins reach every replica at once (services/routing/pin_cache.py).
    # Also how often, at most, a busy session's TTL is refreshed (never less than half the TTL
    # is left). 0: read Redis on every turn.
    cache_seconds: float = Field(60.0, ge=0)

    @property
    def cache_refresh_seconds(self) -> float:
        """`cache_seconds`, at most half the TTL (a session in use must never expire)."""
        return min(self.cache_seconds, self.ttl_seconds / 2)


class Simulation(Section):
    """How a built-in simulated model server behaves (provider `simulated` only)."""

    latency_ms: float = Field(50.0, ge=0)
    tokens_per_second: float = Field(200.0, gt=0)
    cold_start_seconds: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    failure_status: int = Field(500, ge=400, le=599)
    response_tokens: int = Field(24, ge=1, le=4096)


class ProbeSettings(Section):
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


class Deployment(Section):
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


class Pricing(Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class DatabaseSettings(Section):
    """Where the usage ledger lives: SQLite (WAL mode) by default, PostgreSQL by URL."""

    # FR_DATABASE_URL; e.g. postgresql+asyncpg://user@host:5432/db. Relative SQLite paths are
    # relative to the working directory.
    url: str = Field("sqlite+aiosqlite:///.data/fallback_routing.db", min_length=1)


class LedgerSettings(Section):
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
    # The external writer inserts at idle CPU priority, so that its once-a-second burst never
    # takes a core from the processes serving requests (at normal priority it doubled the API's
    # p99 at concurrency 1: bench/RESULTS.md); when it falls behind (a saturated machine), it
    # catches up at normal priority. false: always normal priority.
    writer_idle_priority: bool = True
    # os.write reaches the kernel before the response does, which survives SIGKILL; fsync also
    # survives a power cut, at the price of a disk flush per request.
    fsync: bool = False
    health_snapshot_seconds: float = Field(60.0, gt=0)
    # Records held in memory while the database cannot take them (about 0.5 kB each). Past it,
    # records already safe in the WAL leave memory (replayed once the database is back); when the
    # WAL cannot hold them either, `when_full` decides: refuse new requests with 503
    # `ledger_full` (nothing answered goes unrecorded), or answer them unrecorded, counted in
    # llm_ledger_dropped_records (docs/ledger.md, "Fault model").
    max_pending_records: int = Field(100_000, ge=100)
    when_full: Literal["refuse", "answer"] = "refuse"
    # Savings are what the same tokens would have cost on this model.
    reference_model: str = Field("gpt-4o", min_length=1, max_length=128)
    reference_pricing: Pricing = Pricing(input_per_mtok=2.5, output_per_mtok=10.0)


class ScalerSettings(Section):
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
    # process: a replica that dies, or is never ready, is replaced after this wait (doubling per
    # consecutive failure, at most 5 minutes); after `max_restarts` failures in a row the scaler
    # gives up and says why in /health (a ready replica resets the count).
    restart_backoff_seconds: float = Field(2.0, gt=0)
    max_restarts: int = Field(5, ge=0)
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


class CapacityModel(Section):
    """One of the two models the planner manages."""

    model: str
    # New sessions are pinned to this selector while this model is the routing target.
    session_selector: str
    scaler: ScalerSettings = ScalerSettings()


class CapacitySettings(Section):
    """The capacity planner, `python main.py capacity` (SPEC §7, docs/capacity.md)."""

    # Off unless a config turns it on (services/config/default.yaml does): it needs the two models.
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


class ModelSettings(Section):
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
