"""What every settings section shares: the strict base model, the names allowed in Redis keys
and URLs, and where the project and its default configuration live."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout (or site-packages, installed)
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "default.yaml"  # shipped in the package
ENV_PREFIX = "FR_"

# Names that become part of Redis keys or URLs are checked against these before any I/O.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TIERS = frozenset({"cache", "degraded"})

ModelName = Annotated[str, Field(pattern=MODEL_NAME_RE.pattern)]


class Section(BaseModel):
    """A block of settings: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
