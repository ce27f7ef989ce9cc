"""The API process's runtime: its clients, adapters, router and session store, opened together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from services.config import Settings
from services.providers.anthropic import AnthropicProvider
from services.providers.base import Provider
from services.providers.openai import OpenAIProvider
from services.redis_connection import async_client
from services.router import Router
from services.sessions import SessionStore


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, environ: Mapping[str, str]
) -> dict[str, list[Provider]]:
    """One adapter per deployment; keys are read from the env vars the config names."""
    up = settings.upstream
    providers: dict[str, list[Provider]] = {}
    for model, name, deployment in settings.deployments():
        total = deployment.timeout_seconds or up.request_timeout_seconds
        kwargs = {
            "base_url": deployment.base_url,
            "upstream_model": deployment.model,
            "api_key": environ.get(deployment.api_key_env) if deployment.api_key_env else None,
            "session": session,
            "timeout": aiohttp.ClientTimeout(total=total, sock_connect=up.connect_timeout_seconds),
            # A stream may run long; what must not happen is a long silence between chunks.
            "stream_timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=up.connect_timeout_seconds, sock_read=total
            ),
        }
        adapter: Provider = (
            AnthropicProvider(name, **kwargs)  # type: ignore[arg-type]
            if deployment.provider == "anthropic"
            else OpenAIProvider(name, **kwargs)  # type: ignore[arg-type]
        )
        providers.setdefault(model, []).append(adapter)
    return providers


@dataclass
class Gateway:
    """Everything a request handler needs; `start` and `close` bracket the app's lifespan."""

    settings: Settings
    environ: Mapping[str, str]
    redis: aioredis.Redis | None = None
    http: aiohttp.ClientSession | None = None
    router: Router | None = None
    sessions: SessionStore | None = None
    draining: bool = False
    _owns_redis: bool = field(default=False, repr=False)

    async def start(self) -> None:
        """Open the Redis client and the upstream connection pool; build the router."""
        if self.redis is None:
            self.redis = async_client(
                self.settings.redis.url, timeout=self.settings.redis.socket_timeout_seconds
            )
            self._owns_redis = True
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream.max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self.http = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=True
        )
        self.router = Router(self.settings, build_providers(self.settings, self.http, self.environ))
        self.sessions = SessionStore(
            self.redis,
            prefix=self.settings.redis.key_prefix,
            ttl_seconds=self.settings.sessions.ttl_seconds,
        )
        logger.info(
            "gateway ready: {} models, {} chains",
            len(self.settings.models),
            len(self.settings.chains),
        )

    async def close(self) -> None:
        """Close what `start` opened."""
        if self.http is not None:
            await self.http.close()
        if self.redis is not None and self._owns_redis:
            await self.redis.aclose()

    async def redis_ok(self) -> bool:
        """Whether Redis answers PING right now."""
        if self.redis is None:
            return False
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False
