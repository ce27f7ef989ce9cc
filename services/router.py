"""The router: resolves a selector to an ordered list of deployments and walks it.

A selector is a model name (its deployments) or a chain name (each model's deployments in chain
order). Tier steps (`cache`, `degraded`) are reserved names in chains; the resilience layer gives
them behaviour. A deployment is never tried twice for one request. A non-streamed request fails
over on any upstream error; a streamed one fails over until the first content chunk has been
received (nothing has reached the client by then), and after that an error ends the stream.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from loguru import logger

from services.config import TIERS, Settings
from services.errors import (
    InvalidRequest,
    NotFound,
    UpstreamError,
    UpstreamExhausted,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from services.providers.base import ChunkStream, Json, Provider

# Upstream statuses that say the request itself is wrong: another deployment would say the same.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


class UpstreamRejected(InvalidRequest):
    """The upstream refused the request as invalid; retrying elsewhere would not help."""

    code = "upstream_rejected"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment to try, with the client-facing model it serves."""

    model: str
    provider: Provider


@dataclass(slots=True)
class Routed:
    """A completed non-streamed answer and how it was obtained."""

    body: Json
    model: str
    deployment: str
    attempts: int
    fallback: bool


@dataclass(slots=True)
class RoutedStream:
    """An accepted stream: chunks already received (held back until content) and the rest."""

    head: list[Json]
    stream: ChunkStream
    rest: AsyncIterator[Json]
    model: str
    deployment: str
    attempts: int
    fallback: bool


def _has_content(chunk: Json) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return bool(chunk.get("usage"))


async def _read_until_content(chunks: AsyncIterator[Json], deployment: str) -> list[Json]:
    """Hold back chunks until one carries content: failing over is still invisible until then."""
    head: list[Json] = []
    async for chunk in chunks:
        head.append(chunk)
        if _has_content(chunk):
            return head
    if not head:
        raise UpstreamError(deployment, "stream ended before any chunk")
    return head


def _reason(failure: UpstreamError) -> str:
    if isinstance(failure, UpstreamHTTPError):
        return f"HTTP {failure.status}"
    return type(failure).__name__.removeprefix("Upstream")


class Router:
    """Chains and deployments from the settings, walked in order."""

    def __init__(self, settings: Settings, deployments: Mapping[str, Sequence[Provider]]) -> None:
        self._deployments = {model: tuple(providers) for model, providers in deployments.items()}
        self._chains: dict[str, tuple[str, ...]] = {m: (m,) for m in settings.models}
        self._chains.update({name: tuple(steps) for name, steps in settings.chains.items()})
        # Round-robin start offsets spread load over a model's deployments.
        self._turns = {model: itertools.count() for model in self._deployments}

    def knows(self, selector: str) -> bool:
        """Whether `selector` names a model or a chain."""
        return selector in self._chains

    def resolve(self, selector: str) -> tuple[str, ...]:
        """The chain steps of a selector; NotFound for an unknown one."""
        try:
            return self._chains[selector]
        except KeyError:
            raise NotFound(
                f"The model or chain '{selector}' does not exist", code="model_not_found"
            ) from None

    def candidates(self, selector: str) -> list[Candidate]:
        """Deployments in the order to try them, each at most once."""
        seen: set[str] = set()
        ordered: list[Candidate] = []
        for step in self.resolve(selector):
            if step in TIERS:
                continue
            providers = self._deployments[step]
            start = next(self._turns[step]) % len(providers)
            for provider in (*providers[start:], *providers[:start]):
                if provider.name not in seen:
                    seen.add(provider.name)
                    ordered.append(Candidate(step, provider))
        return ordered

    async def complete(self, selector: str, request: Json) -> Routed:
        """Walk the chain until one deployment answers."""
        plan = self.candidates(selector)
        failures: list[UpstreamError] = []
        for attempt, candidate in enumerate(plan, start=1):
            try:
                body = await candidate.provider.complete(request)
            except UpstreamError as exc:
                self._note_failure(candidate, exc, failures)
                continue
            return Routed(
                body,
                candidate.model,
                candidate.provider.name,
                attempt,
                candidate.model != plan[0].model,
            )
        raise self._exhausted(selector, plan, failures)

    async def open_stream(self, selector: str, request: Json) -> RoutedStream:
        """Walk the chain until one deployment has streamed its first content chunk."""
        plan = self.candidates(selector)
        failures: list[UpstreamError] = []
        for attempt, candidate in enumerate(plan, start=1):
            stream: ChunkStream | None = None
            try:
                stream = await candidate.provider.open_stream(request)
                rest = aiter(stream)
                head = await _read_until_content(rest, candidate.provider.name)
            except UpstreamError as exc:
                if stream is not None:
                    await stream.aclose()
                self._note_failure(candidate, exc, failures)
                continue
            return RoutedStream(
                head, stream, rest, candidate.model, candidate.provider.name, attempt,
                candidate.model != plan[0].model,
            )  # fmt: skip
        raise self._exhausted(selector, plan, failures)

    @staticmethod
    def _note_failure(
        candidate: Candidate, exc: UpstreamError, failures: list[UpstreamError]
    ) -> None:
        logger.warning(
            "attempt on {} ({}) failed: {}", candidate.provider.name, candidate.model, exc
        )
        if isinstance(exc, UpstreamHTTPError) and exc.status in CLIENT_FAULT_STATUSES:
            raise UpstreamRejected(f"{candidate.model} rejected the request: {exc.detail}") from exc
        failures.append(exc)

    @staticmethod
    def _exhausted(
        selector: str, plan: list[Candidate], failures: list[UpstreamError]
    ) -> UpstreamExhausted:
        if not plan:
            return UpstreamExhausted(f"no deployment is available for '{selector}'", status=503)
        summary = "; ".join(f"{f.deployment}: {_reason(f)}" for f in failures)
        status = 504 if failures and all(isinstance(f, UpstreamTimeout) for f in failures) else 502
        return UpstreamExhausted(
            f"every upstream of '{selector}' failed ({summary})", status=status
        )
