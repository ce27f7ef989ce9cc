"""The budgets' admin views (docs/security.md, "Budgets"):

    GET  /api/admin/budgets                  every known key's limit, spend and reservations
    PUT  /api/admin/budgets/{key_id}         {"budget_usd": 25.0} (or null: back to the config)

Admin key only (every `/api/admin/*` route is). Key ids are what logs and the usage views show:
the first 12 hex digits of a key's SHA-256, never the key.
"""

from __future__ import annotations

import re
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.budgets import Budgets
from services.api.json_routes import JsonBodyRoute
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.errors import InvalidRequest

KEY_ID_RE = re.compile(r"^(anonymous|[0-9a-f]{12})$")


class BudgetParts(Protocol):
    """What these views read of the gateway."""

    @property
    def budgets(self) -> Budgets: ...


class BudgetRequest(BaseModel):
    """A key's spending limit per period, in USD; null removes the admin's limit."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(ge=0, le=1_000_000_000)


Parts = Annotated[BudgetParts, Depends(gateway_parts)]
routes = APIRouter(prefix="/api/admin/budgets", route_class=JsonBodyRoute)


def known_key_id(key_id: str) -> str:
    if not KEY_ID_RE.match(key_id):
        raise InvalidRequest("a key id is 12 hex digits (as logs show it), or 'anonymous'",
                             code="invalid_key_id")  # fmt: skip
    return key_id


@routes.get("")
async def budgets(parts: Parts) -> Response:
    """Every configured or overridden key: its limit, what it spent and holds this period."""
    return json_response(await parts.budgets.view([]))


@routes.put("/{key_id}")
async def set_budget(key_id: str, body: BudgetRequest, parts: Parts) -> Response:
    """Set (or, with null, remove) a key's limit, for every API process at once."""
    await parts.budgets.set_limit(known_key_id(key_id), body.budget_usd)
    view = await parts.budgets.view([key_id])
    return json_response({"key_id": key_id, **view["keys"][key_id]})
