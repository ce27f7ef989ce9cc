"""The alert views (admin key).

    GET  /api/admin/alerts          the webhooks (scheme and host only), their events, and how
                                    many alerts were sent, failed, dropped or sent elsewhere
    POST /api/admin/alerts/test     {"url"?}: send a `test` alert now, once, to every webhook (or
                                    the configured one with that URL); how each answered

The dry run goes through the same signing and client as real alerts but not the queue, and is
not retried: what it reports is what the receiver said to one delivery.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.alerts.sender import AlertSender
from services.api.json_routes import JsonBodyRoute
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.errors import InvalidRequest, NotFound


class AlertParts(Protocol):
    @property
    def alerts(self) -> AlertSender: ...


class DryRun(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str | None = Field(None, max_length=2048, description="One configured webhook's URL.")


Parts = Annotated[AlertParts, Depends(gateway_parts)]
routes = APIRouter(prefix="/api/admin/alerts", route_class=JsonBodyRoute)


@routes.get("")
async def alert_status(parts: Parts) -> Response:
    """The configured webhooks and what was sent."""
    return json_response(parts.alerts.status())


@routes.post("/test")
async def dry_run(parts: Parts, body: DryRun | None = None) -> Response:
    """Send one signed `test` alert to each webhook (or the one named) and report the answers."""
    alerts = parts.alerts
    if not alerts.enabled:
        raise InvalidRequest("no webhooks are configured (alerts.webhooks)", code="no_webhooks")
    url = body.url if body is not None else None
    results = await alerts.test(url)
    if not results:
        raise NotFound("no configured webhook has that URL", code="webhook_not_found")
    return json_response({"results": results, "ok": all(r["ok"] for r in results)})
