"""Adapters from deployments: the one place a deployment's settings become a `Provider`."""

from __future__ import annotations

from collections.abc import Mapping

from services.config import Deployment, Settings
from services.platform.http_client import HTTPClient
from services.providers.anthropic import AnthropicProvider
from services.providers.base import Provider
from services.providers.openai import OpenAIProvider


def build_provider(
    name: str,
    deployment: Deployment,
    settings: Settings,
    session: HTTPClient,
    environ: Mapping[str, str],
) -> Provider:
    """The adapter of one deployment; its key is read from the env var the config names.

    The client bounds only the connect: how long an attempt may wait for its first token, or
    between two chunks, is the executor's (per deployment, within the walk's deadline)."""
    up = settings.upstream
    kwargs = {
        "base_url": deployment.base_url,
        "upstream_model": deployment.model,
        "api_key": environ.get(deployment.api_key_env) if deployment.api_key_env else None,
        "session": session,
        "connect_timeout": up.connect_timeout_seconds,
        "probe": deployment.probe,
        "max_line_bytes": up.max_line_bytes,
        "max_response_bytes": up.max_response_bytes,
    }
    if deployment.provider == "anthropic":
        return AnthropicProvider(name, **kwargs)  # type: ignore[arg-type]
    return OpenAIProvider(name, **kwargs)  # type: ignore[arg-type]


def build_providers(
    settings: Settings, session: HTTPClient, environ: Mapping[str, str]
) -> dict[str, list[Provider]]:
    """One adapter per configured deployment, by model (every model, even with none)."""
    providers: dict[str, list[Provider]] = {model: [] for model in settings.models}
    for model, name, deployment in settings.deployments():
        providers[model].append(build_provider(name, deployment, settings, session, environ))
    return providers
