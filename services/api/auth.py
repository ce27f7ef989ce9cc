"""API keys (SPEC §10): client keys from `FR_API_KEYS` (comma-separated) and an admin key from
`FR_ADMIN_KEY`, sent as `Authorization: Bearer <key>`.

    public   /livez /readyz /health /api/health (probes), /docs /openapi.json, the console's
             page and its files under /ui (its data comes from admin endpoints)
    metrics  /metrics, /api/metrics, /api/metrics/prometheus: public, unless `api.metrics_key`
             is set (then that key or the admin key)
    admin    /api/admin/*, POST /circuit-breakers/{name}/reset, POST /api/llm/record,
             POST /api/llm/providers/{name}/enable
    client   everything else; the admin key is accepted wherever a client key is

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared with every
digest using `hmac.compare_digest`, so neither the comparison nor which key matched shows in
the timing. With no key configured, auth is off and `main.py api` binds to loopback only.

A request's key is named in logs and rate-limit keys by `key_id`: the first 12 hex digits of
its digest, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Role = Literal["public", "metrics", "client", "admin"]

PUBLIC_PATHS = frozenset(
    {"/livez", "/readyz", "/health", "/api/health", "/docs", "/openapi.json",
     "/docs/oauth2-redirect", "/ui"}
)  # fmt: skip
METRICS_PATHS = frozenset({"/metrics", "/api/metrics", "/api/metrics/prometheus"})
ADMIN_POSTS = ("/api/llm/record", "/api/llm/providers/")
ANONYMOUS = "anonymous"


def required_role(method: str, path: str) -> Role:
    """Who may call `method path` (pure: the table above)."""
    if path in METRICS_PATHS:
        return "metrics"  # public unless `api.metrics_key` is set
    if path in PUBLIC_PATHS or path.startswith("/ui/"):
        return "public"
    if path.startswith("/api/admin/"):
        return "admin"
    if method == "POST" and (
        (path.startswith("/circuit-breakers/") and path.endswith("/reset"))
        or path == ADMIN_POSTS[0]
        or (path.startswith(ADMIN_POSTS[1]) and path.endswith("/enable"))
    ):
        return "admin"
    return "client"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key_digest: bytes) -> str:
    return key_digest.hex()[:12]


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    admin: bool


# Shared instances: the common cases allocate nothing per request.
OPEN_ACCESS = Caller(ANONYMOUS, admin=True)  # no keys configured: everything is open
PUBLIC_CALLER = Caller(ANONYMOUS, admin=False)


@dataclass(frozen=True, slots=True)
class Denied:
    status: int  # 401 no or unknown key; 403 a client key on an admin endpoint
    code: str
    message: str


class KeyRing:
    """The configured keys, as digests."""

    def __init__(
        self, client_keys: list[str], admin_key: str | None, metrics_key: str | None = None
    ) -> None:
        self._clients = [digest(k) for k in client_keys]
        self._admin = digest(admin_key) if admin_key else None
        self._metrics = digest(metrics_key) if metrics_key else None
        self.secrets = [k for k in (*client_keys, admin_key, metrics_key) if k]

    @classmethod
    def from_env(cls, environ: Mapping[str, str], metrics_key: str | None = None) -> KeyRing:
        """Client keys from FR_API_KEYS, the admin key from FR_ADMIN_KEY; the scrape key is the
        setting `api.metrics_key` (FR_API_METRICS_KEY)."""
        clients = [k.strip() for k in environ.get("FR_API_KEYS", "").split(",") if k.strip()]
        admin = environ.get("FR_ADMIN_KEY", "").strip() or None
        return cls(clients, admin, metrics_key or None)

    @property
    def enabled(self) -> bool:
        """Whether client or admin keys are configured (without them: loopback, all open)."""
        return bool(self._clients) or self._admin is not None

    @property
    def active(self) -> bool:
        """Whether any request may be refused for its key (a metrics key alone guards /metrics)."""
        return self.enabled or self._metrics is not None

    def identify(self, presented: str) -> Caller | None:
        """The caller a key belongs to; every digest is compared, whatever matches first."""
        candidate = digest(presented)
        is_admin = self._admin is not None and hmac.compare_digest(candidate, self._admin)
        is_client = False
        for known in self._clients:
            is_client |= hmac.compare_digest(candidate, known)
        if not (is_admin or is_client):
            return None
        return Caller(key_id(candidate), is_admin)

    def check(self, role: Role, authorization: str | None) -> Caller | Denied:
        """Admit or refuse a request needing `role`, from its Authorization header."""
        if role == "metrics":
            return self._check_scrape(authorization)
        if not self.enabled:
            return OPEN_ACCESS
        if role == "public":
            return PUBLIC_CALLER
        if not authorization:
            return Denied(
                401, "missing_api_key", "This endpoint needs 'Authorization: Bearer <key>'"
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return Denied(401, "invalid_api_key", "The Authorization header must be 'Bearer <key>'")
        caller = self.identify(presented.strip())
        if caller is None:
            return Denied(401, "invalid_api_key", "The API key is not valid")
        if role == "admin" and not caller.admin:
            return Denied(403, "insufficient_permissions", "This endpoint needs the admin key")
        return caller

    def _check_scrape(self, authorization: str | None) -> Caller | Denied:
        """/metrics: open without a metrics key; with one, that key or the admin key."""
        if self._metrics is None:
            return PUBLIC_CALLER if self.enabled else OPEN_ACCESS
        scheme, _, presented = (authorization or "").partition(" ")
        candidate = digest(presented.strip()) if scheme.lower() == "bearer" else b""
        allowed = hmac.compare_digest(candidate, self._metrics)
        if self._admin is not None:
            allowed |= hmac.compare_digest(candidate, self._admin)
        if not allowed:
            return Denied(401, "invalid_api_key", "/metrics needs 'Authorization: Bearer "
                          "<api.metrics_key>' (or the admin key)")  # fmt: skip
        return PUBLIC_CALLER


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def bind_refusal(host: str, keys: KeyRing) -> str | None:
    """Why binding `host` is refused (no keys and not loopback), or None."""
    if keys.enabled or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could use "
        "the gateway. Set FR_API_KEYS (and FR_ADMIN_KEY), or bind 127.0.0.1."
    )
