"""What every ledger view shares: the engine (503 while the ledger is off), database errors as
503, and whose usage the caller may see (tenancy, docs/security.md)."""

from __future__ import annotations

from typing import Any, Protocol

from services.errors import LedgerUnavailable
from services.ledger.runtime import LedgerRuntime
from services.platform.request_context import caller_var, sees_all_var


class HasLedger(Protocol):
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...


def own_key() -> str | None:
    """Whose usage the caller may see: None (everyone's) for the admin key or a keyless
    gateway, else the caller's own key id."""
    return None if sees_all_var.get() else caller_var.get()


def scope() -> str:
    """What a usage view covers, as its answers say."""
    key = own_key()
    return "all" if key is None else f"key:{key}"


def engine(parts: HasLedger) -> Any:
    """The ledger's database engine; 503 when the ledger is off."""
    runtime = parts.ledger_runtime
    if runtime is None:
        raise LedgerUnavailable("the usage ledger is disabled (ledger.enabled: false)")
    return runtime.engine


async def query(coro: Any) -> Any:
    """Await a report query; a database failure is 503 `ledger_unavailable`."""
    # Imported here, not at the top: by the time a query runs its engine has loaded SQLAlchemy,
    # and an API process must not load it before (services/ledger/runtime.py).
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return await coro
    except SQLAlchemyError as exc:
        raise LedgerUnavailable("the ledger database cannot be reached") from exc
