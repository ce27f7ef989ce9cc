"""How a view reaches the gateway: a FastAPI dependency on the app's `GatewayRef`.

The gateway is opened by the app's lifespan, after the routes exist, so views cannot be handed
its parts when they are built. Each view module declares, as a Protocol, the parts it reads, and
annotates its `parts` parameter with it and `Depends(gateway_parts)`: mypy then holds the view to
what it declared, and a test can pass any object that has those parts.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request


def gateway_parts(request: Request) -> Any:
    """The open gateway (503 `starting` while the lifespan has not opened it)."""
    return request.app.state.gateway()
