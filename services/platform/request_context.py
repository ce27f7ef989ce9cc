"""The current request's id, visible to every log line written while serving it."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Who is calling: the key id (services/api/auth.py), for rate limits and logs; never the key.
caller_var: ContextVar[str] = ContextVar("caller", default="anonymous")
# Whether the caller may see every key's data (the admin key, or no keys configured at all).
sees_all_var: ContextVar[bool] = ContextVar("sees_all", default=True)

# A client-supplied X-Request-ID is kept only if it is short and plain, so it is safe in logs.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    """A random 16-hex-digit id; urandom is ~5x cheaper than uuid4 on the hot path."""
    return os.urandom(8).hex()


def accept_request_id(candidate: str | None) -> str:
    """Keep a well-formed client id, otherwise mint one."""
    if candidate and _CLIENT_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()
