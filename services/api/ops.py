"""The operations views: `/v1/models`, `/livez`, `/readyz`, `/health` (the seed format, SPEC
§9) and `/metrics` (Prometheus, merged over every worker process)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from services import __version__
from services.api.responses import json_response
from services.config import Settings
from services.gateway import GatewayRef
from services.ledger import db as ledger_db
from services.platform.metrics import Metrics


def ops_routes(settings: Settings, ref: GatewayRef, exporter: Metrics) -> APIRouter:
    """The routes, reading the gateway through `ref` and rendering `exporter`."""
    routes = APIRouter()

    @routes.get("/v1/models")
    async def list_models() -> Response:
        """Models and chains, in OpenAI's list shape (`kind` says which)."""
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "fallback-routing",
                "kind": kind,
            }
            for kind, names in (("model", settings.models), ("chain", settings.chains))
            for name in names
        ]
        return json_response({"object": "list", "data": data})

    @routes.get("/livez")
    async def livez() -> Response:
        """The process is alive (the event loop answers)."""
        return json_response({"status": "alive"})

    @routes.get("/readyz")
    async def readyz() -> Response:
        """Ready for traffic unless draining; a Redis outage means fail-open, not unready."""
        gw = ref()
        redis_ok = await gw.redis_ok()
        ready = not gw.draining
        body = {
            "status": "ready" if ready else "not_ready",
            "redis_ok": redis_ok,
            "mode": "shared" if redis_ok else "fail-open",
            "draining": gw.draining,
        }
        return json_response(body, 200 if ready else 503)

    @routes.get("/health")
    async def health() -> Response:
        """The seed format (SPEC §9): breaker state per provider, Redis, the ledger; plus the
        models and chains."""
        gw = ref()
        redis_ok = await gw.redis_ok()
        board = gw.breakers
        ledger = gw.ledger_state()
        db_ok = await ledger_db.ping(gw.engine) if gw.engine is not None else False
        models = {
            name: {"deployments": len(m.deployments), "local": m.local}
            for name, m in settings.models.items()
        }
        last_write = ledger.last_db_write if ledger is not None else None
        ledger_ok = ledger is None or (db_ok and ledger.writer != "missing")
        return json_response(
            {
                "status": "ok" if redis_ok and ledger_ok else "degraded",
                "providers": {name: board.state(name).state for name in board.names},
                "redis_ok": redis_ok,
                "db_ok": db_ok,
                "buffer_len": ledger.buffer_len if ledger is not None else 0,
                "last_flush_ms": ledger.last_flush_ms if ledger is not None else None,
                "wal_size_bytes": ledger.wal_size_bytes if ledger is not None else 0,
                "last_db_write": last_write.strftime("%Y-%m-%dT%H:%M:%SZ") if last_write else None,
                "version": __version__,
                "mode": "shared" if redis_ok else "fail-open",
                "ledger": "off" if ledger is None else "on",
                "ledger_writer": ledger.writer if ledger is not None else None,
                "planner": gw.planner_view(),
                "models": models,
                "chains": settings.chain_steps(),
            }
        )

    @routes.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition, merged over every worker process."""
        gw = ref()
        if gw.ledger is not None:
            exporter.buffer_len.set(gw.ledger.pending)
            exporter.wal_size.set(gw.ledger.wal_size_bytes)
        for name in gw.breakers.names:
            exporter.breaker(name, gw.breakers.state(name).state)
        return Response(exporter.render(), media_type=exporter.content_type)

    return routes
