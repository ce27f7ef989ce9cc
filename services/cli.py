"""Fallback Routing launcher: `fallback-routing COMMAND` (installed) or `python main.py COMMAND`
(a checkout); `--help` lists the commands."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from services.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    effective_config,
    load_settings,
    redact_url,
)

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="FR_CONFIG",
        help="YAML config (default: the embedded services/config/default.yaml).",
    ),
]


def _load(config: Path | None) -> tuple[Settings, dict[str, str], Path]:
    environ = dict(os.environ)
    path = (config or Path(environ.get("FR_CONFIG") or DEFAULT_CONFIG_PATH)).resolve()
    from services.errors import RedisURLError
    from services.platform.redis_topology import parse_redis_url

    try:
        settings = load_settings(path, environ)
        parse_redis_url(settings.redis.url)  # a malformed Sentinel or Cluster URL: say so now
    except RedisURLError as exc:
        typer.echo(f"invalid configuration: redis.url: {exc}", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    return settings, environ, path


def _exit_zero(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run an asyncio service; SIGINT/SIGTERM set the event it gets, so it can stop cleanly."""

    async def runner() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await main(stopping)

    asyncio.run(runner())


@cli.command("all")
def run_all(config: ConfigOption = None) -> None:
    """Ensure Redis, then supervise the simulated models, the API, the ledger writer, the capacity
    planner and the Redis health checker."""
    from loguru import logger

    from services.platform.logs import configure_logging
    from services.platform.redis_connection import (
        free_port,
        ping,
        redis_server_argv,
        redis_server_available,
        start_fakeredis_server,
        wait_until_answers,
    )
    from services.platform.redis_topology import parse_redis_url
    from services.platform.supervisor import ChildSpec, Supervisor, with_package_path

    settings, environ, path = _load(config)
    configure_logging("launcher", settings.log)
    stop = _stop_on_signals()
    # The API's drain (readiness off, delay, in-flight requests) must finish before a SIGKILL.
    grace = settings.api.drain_delay_seconds + settings.api.shutdown_grace_seconds + 10
    supervisor = Supervisor([], stop_grace_seconds=grace)
    redis_url = settings.redis.url
    fake = None
    if ping(redis_url):
        logger.info("using Redis at {}", redact_url(redis_url))
    elif not settings.redis.embedded or parse_redis_url(redis_url).mode != "standalone":
        # A private server in place of a Sentinel set or a Cluster would silently split state.
        logger.error(
            "Redis at {} does not answer (a private Redis is only started in place of a plain "
            "redis:// URL with redis.embedded on)",
            redact_url(redis_url),
        )
        raise typer.Exit(1)
    elif redis_server_available():
        port = free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        supervisor.add(ChildSpec("redis-server", redis_server_argv(port), stop_last=True))
        if not wait_until_answers(redis_url, 10):
            supervisor.stop()
            raise typer.Exit(1)
        logger.info("no Redis answered at {}; started a private redis-server at {}",
                    redact_url(settings.redis.url), redis_url)  # fmt: skip
    else:
        fake = start_fakeredis_server()
        redis_url = fake.url
        logger.info(fake.describe())

    child_env = with_package_path({**environ, "FR_CONFIG": str(path), "FR_REDIS_URL": redis_url})
    if settings.ledger.writer == "auto":
        child_env["FR_LEDGER_WRITER"] = "external"  # the writer is started below
    me = [sys.executable, "-m", "services.cli"]
    for model, model_settings in settings.models.items():
        for index, deployment in enumerate(model_settings.deployments):
            if deployment.provider == "simulated":
                name = deployment.name or f"{model}:{index}"
                supervisor.add(
                    ChildSpec(
                        f"simulated {name}", [*me, "simulate", "--deployment", name], child_env
                    )
                )
    supervisor.add(ChildSpec("api", [*me, "api"], child_env))
    if settings.ledger.enabled and settings.ledger.writer != "inline":
        # auto or external: the API only appends, this writer does the database work.
        supervisor.add(ChildSpec("ledger-writer", [*me, "ledger"], child_env, stop_last=True))
    supervisor.add(ChildSpec("redis-health", [*me, "redis", "--watch"], child_env))
    if settings.capacity.enabled:
        supervisor.add(ChildSpec("capacity", [*me, "capacity"], child_env))
    logger.info(
        "serving on http://{}:{} — Ctrl-C stops everything", settings.api.host, settings.api.port
    )
    try:
        supervisor.run(stop)
    finally:
        if fake is not None:
            fake.stop()
        logger.info("all stopped")


@cli.command()
def api(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: api.workers).")
    ] = None,
) -> None:
    """Run the FastAPI server (uvicorn, uvloop, httptools)."""
    import uvicorn

    from services.api.auth import KeyRing, bind_refusal
    from services.api.http_guard import GuardedHttpToolsProtocol
    from services.platform.logs import configure_logging, intercept_stdlib_logging

    settings, environ, path = _load(config)
    bind_host = host or settings.api.host
    keys = KeyRing.from_env(environ, settings.api.metrics_key)
    if (refusal := bind_refusal(bind_host, keys)) is not None:
        typer.echo(refusal, err=True)
        raise typer.Exit(2)
    os.environ["FR_CONFIG"] = str(path)  # the workers' app factory reads it
    # The guarded HTTP protocol reads its limits here, in every worker (services/api/http_guard.py).
    os.environ["FR_API_MAX_HEADER_BYTES"] = str(settings.api.max_header_bytes)
    os.environ["FR_API_CLIENT_TIMEOUT_SECONDS"] = str(settings.api.client_timeout_seconds)
    worker_count = workers or settings.api.workers
    if worker_count > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers share their metrics through files here (set before any worker
        # imports prometheus_client); a fresh directory per run, so no stale values.
        import shutil

        metrics_dir = Path(settings.log.dir) / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    configure_logging("api_server", settings.log)
    intercept_stdlib_logging(settings.log.level)
    if not keys.enabled:
        from loguru import logger

        logger.warning("no API keys configured (FR_API_KEYS, FR_ADMIN_KEY): every endpoint is "
                       "open, so the server listens on {} only", bind_host)  # fmt: skip
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was installed before it ran. A stop that was asked for and completed is a success.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_zero)
    uvicorn.run(
        "services.app:app_from_env",
        factory=True,
        host=bind_host,
        port=port or settings.api.port,
        workers=worker_count,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,  # httptools, with head-size and client deadlines
        access_log=False,  # the gateway logs one line per request itself, with its id
        log_config=None,
        server_header=False,
        # In-flight requests and streams get this long once the listener closes
        # (services/api/drain.py first flips readiness and waits api.drain_delay_seconds).
        timeout_graceful_shutdown=math.ceil(settings.api.shutdown_grace_seconds),
    )


@cli.command()
def redis(
    config: ConfigOption = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep checking; log to .logs/redis_health.log.")
    ] = False,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between checks with --watch.")
    ] = None,
) -> None:
    """Check the Redis connection once (exit 0/1), or keep checking with --watch."""
    from loguru import logger

    from services.platform.logs import configure_logging
    from services.platform.redis_health import check_redis
    from services.platform.redis_health import watch as watch_redis

    settings, _, _ = _load(config)
    if not watch:
        result = check_redis(settings.redis.url)
        typer.echo(result.describe())
        raise typer.Exit(0 if result.ok else 1)
    configure_logging("redis_health", settings.log, console=False)
    stop = _stop_on_signals()

    def report(result: object) -> None:
        ok = getattr(result, "ok", False)
        logger.log("INFO" if ok else "WARNING", result.describe())  # type: ignore[attr-defined]

    watch_redis(
        settings.redis.url,
        interval=interval or settings.redis.health_interval_seconds,
        prefix=settings.redis.key_prefix,
        stop=stop,
        report=report,
    )


@cli.command()
def capacity(config: ConfigOption = None) -> None:
    """Run the capacity planner: watch load, start and stop the large and small models' replicas,
    steer new sessions. Log: .logs/capacity_planning.log (every decision and why)."""
    import aiohttp

    from services.alerts.sender import AlertSender
    from services.capacity.planner import CapacityPlanner, build_scaler
    from services.capacity.policy import ROLES, Role
    from services.capacity.scalers import Scaler
    from services.platform.logs import configure_logging
    from services.platform.redis_connection import async_client

    settings, _, _ = _load(config)
    if not settings.capacity.enabled:
        typer.echo("capacity.enabled is false in this config: nothing to plan", err=True)
        raise typer.Exit(2)
    configure_logging("capacity_planning", settings.log)

    async def serve(stopping: asyncio.Event) -> None:
        redis_client = async_client(
            settings.redis.url, timeout=settings.redis.socket_timeout_seconds
        )
        async with aiohttp.ClientSession() as http:
            log_dir = Path(settings.log.dir)
            scalers: dict[Role, Scaler] = {}
            for role in ROLES:
                managed = getattr(settings.capacity, role)  # capacity.large / capacity.small
                scalers[role] = build_scaler(managed.model, managed.scaler, http, log_dir)
            alerts = AlertSender(settings.alerts, os.environ, redis_client, None,
                                 prefix=settings.redis.key_prefix)  # fmt: skip
            sending = asyncio.create_task(alerts.run()) if alerts.enabled else None
            planner = CapacityPlanner(settings, redis_client, scalers, alerts=alerts)
            try:
                await planner.run(stopping)
            finally:
                if sending is not None:
                    sending.cancel()
                await alerts.close()
                await redis_client.aclose()

    _run_until_signal(serve)


@cli.command()
def ledger(config: ConfigOption = None) -> None:
    """Run the external ledger writer: insert the API's sealed WAL files into the database.

    For `ledger.writer: external`; `main.py all` starts it (and, with `auto`, switches its API to
    external). Log: .logs/ledger_writer.log."""
    from services.ledger.db import make_engine
    from services.ledger.runtime import registry_rows
    from services.ledger.writer import CatchUp, LedgerWriter
    from services.platform.idle_lane import IdleLane, idle_priority_available
    from services.platform.logs import configure_logging

    settings, _, _ = _load(config)
    configure_logging("ledger_writer", settings.log)
    if settings.ledger.writer == "inline":
        from loguru import logger

        logger.warning("ledger.writer is 'inline': the API processes write the database "
                       "themselves; this writer only ingests orphaned WAL files")  # fmt: skip
    wal_dir = Path(settings.ledger.wal_dir)
    interval = settings.ledger.flush_interval_seconds

    def new_writer() -> LedgerWriter:
        return LedgerWriter(make_engine(settings.database.url), wal_dir, interval=interval,
                            registry=registry_rows(settings))  # fmt: skip

    async def routine(stop: asyncio.Event) -> None:
        writer = new_writer()
        try:
            await writer.run(stop)
        finally:
            await writer.engine.dispose()

    async def serve(stopping: asyncio.Event) -> None:
        if not (settings.ledger.writer_idle_priority and idle_priority_available()):
            await routine(stopping)
            return
        # Routine passes at idle priority on a thread of their own; this (normal-priority)
        # thread steps in when they fall behind (services/platform/idle_lane.py).
        lane = IdleLane("ledger-writer")
        lane.start(routine)
        writer = new_writer()
        try:
            catch_up = CatchUp(writer, wal_dir, lane_running=lambda: lane.running,
                               behind_after=max(5.0, 5 * interval))  # fmt: skip
            await catch_up.run(stopping)
        finally:
            if not await asyncio.to_thread(lane.stop, 30.0):
                await writer.ingest_once()  # the lane's last pass could not run: do it here
            await writer.engine.dispose()

    _run_until_signal(serve)


@cli.command()
def simulate(
    config: ConfigOption = None,
    deployment: Annotated[
        str | None, typer.Option(help="A simulated deployment of the config, e.g. large-model:0.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (standalone use, without --deployment).")
    ] = None,
    model_name: Annotated[
        str, typer.Option(help="Model name it answers as (standalone).")
    ] = "simulated-model",
    cold_start_seconds: Annotated[
        float, typer.Option(help="Seconds before /health says ok (standalone).")
    ] = 0.0,
    latency_ms: Annotated[
        float, typer.Option(help="Delay before the first token (standalone).")
    ] = 50.0,
    tokens_per_second: Annotated[
        float, typer.Option(help="Generation speed (standalone).")
    ] = 200.0,
    failure_rate: Annotated[
        float, typer.Option(help="Share of requests that fail (standalone).")
    ] = 0.0,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Run a simulated model server (OpenAI and Anthropic protocols) in the foreground."""
    from services.config import Simulation
    from services.dev.simulator import run_simulator
    from services.platform.logs import configure_logging

    if deployment is not None:
        settings, _, _ = _load(config)
        # Any deployment can be simulated: in docker-compose the API sees plain OpenAI servers
        # (provider: openai, reached by service name) that this command runs from `simulation:`.
        found = {name: d for _, name, d in settings.deployments()}
        if deployment not in found:
            typer.echo(f"no deployment named {deployment!r}; have {sorted(found)}", err=True)
            raise typer.Exit(2)
        dep = found[deployment]
        configure_logging("simulator", settings.log)
        run_simulator(dep.model, dep.simulation, host=host, port=dep.port)
        return
    if port is None:
        typer.echo("give --deployment NAME, or --port for a standalone server", err=True)
        raise typer.Exit(2)
    sim = Simulation(
        latency_ms=latency_ms, tokens_per_second=tokens_per_second,
        cold_start_seconds=cold_start_seconds, failure_rate=failure_rate,
    )  # fmt: skip
    run_simulator(model_name, sim, host=host, port=port)


@cli.command()
def demo(
    config: ConfigOption = None,
    requests: Annotated[int, typer.Option(min=1, max=10_000, help="Requests per phase.")] = 40,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Concurrent clients.")] = 4,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Scripted traffic with injected provider failures through the real pipeline, summarised.

    Exits 1 if any client saw an error."""
    import json

    from services.dev.demo import render, run_demo
    from services.platform.logs import configure_logging

    settings, _, _ = _load(config)
    configure_logging("demo", settings.log, console=False)
    typer.echo(
        f"running 9 phases of {requests} requests (gateway log: {settings.log.dir}/demo.log)"
    )
    summary = asyncio.run(run_demo(requests, concurrency, settings.log.dir))
    typer.echo(json.dumps(summary) if json_output else render(summary))
    if any(row["errors"] for row in summary["phases"]):
        raise typer.Exit(1)


@cli.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the config; print the effective settings (env applied, secrets redacted)."""
    settings, environ, path = _load(config)
    typer.echo(f"# {path}: valid")
    typer.echo(yaml.safe_dump(effective_config(settings, environ), sort_keys=False), nl=False)


def main() -> None:
    """The console command `fallback-routing`."""
    cli()


if __name__ == "__main__":
    main()
