"""Request bodies of the ledger's views (`services/api/ledger_views.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, Strict, model_validator

from services.config import MODEL_NAME_RE

# Seed 002's `status` words, as HTTP statuses.
STATUS_WORDS = {"success": 200, "failure": 500, "error": 500, "timeout": 504}


class ExternalUsage(BaseModel):
    """Usage that happened outside the gateway, to be counted with the rest. Seed 002's names
    are accepted too: `provider_name`, `prompt_tokens`, `completion_tokens`,
    `duration_seconds`, and `status` as success|failure|error|timeout."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        pattern=MODEL_NAME_RE.pattern, description="Model name (priced if configured)."
    )
    provider: str | None = Field(
        None,
        pattern=MODEL_NAME_RE.pattern,
        validation_alias=AliasChoices("provider", "provider_name"),
        description="Deployment or provider name (or `provider_name`).",
    )
    tokens_in: int = Field(
        ge=0,
        le=100_000_000,
        strict=True,
        validation_alias=AliasChoices("tokens_in", "prompt_tokens"),
    )
    tokens_out: int = Field(
        ge=0,
        le=100_000_000,
        strict=True,
        validation_alias=AliasChoices("tokens_out", "completion_tokens"),
    )
    cost_usd: float | None = Field(
        None, ge=0, le=1_000_000, description="Default: from pricing; 0 for an unpriced model."
    )
    duration_ms: float | None = Field(None, ge=0, le=86_400_000)
    duration_seconds: float | None = Field(None, ge=0, le=86_400)
    status: Annotated[int, Strict()] | Literal["success", "failure", "error", "timeout"] = 200
    local: bool = Field(False, strict=True)
    timestamp: datetime | None = Field(None, description="ISO 8601 with a zone; default now.")

    @model_validator(mode="after")
    def _one_duration_and_a_real_status(self) -> ExternalUsage:
        if self.duration_ms is not None and self.duration_seconds is not None:
            raise ValueError("give duration_ms or duration_seconds, not both")
        if isinstance(self.status, int) and not 100 <= self.status <= 599:
            raise ValueError(
                "status must be an HTTP status (100..599) or success|failure|error|timeout"
            )
        return self

    @property
    def http_status(self) -> int:
        return STATUS_WORDS[self.status] if isinstance(self.status, str) else self.status

    @property
    def milliseconds(self) -> float:
        if self.duration_seconds is not None:
            return self.duration_seconds * 1000
        return self.duration_ms or 0.0


class EnableRequest(BaseModel):
    """Switch a provider on or off."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
