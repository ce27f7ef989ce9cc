"""The router: resolves a selector to its chain and the deployments to try, in order.

A selector is a model name (its deployments) or a chain name (each model's deployments in chain
order, then its tiers). Several deployments of one model take turns at going first (round robin),
and a deployment appears once per plan even when two chain steps share it. Walking the plan,
with breakers, retries and tiers, is `services/routing/executor.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.config import TIERS, HedgeSettings, RetrySettings, Settings
from services.errors import NotFound
from services.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Policy:
    """What a selector's chain says beyond its steps: its tiers, its first model (an answer from
    any other is a fallback), its retry and hedge policies."""

    tiers: frozenset[str]
    first_model: str | None
    retry: RetrySettings
    hedge: HedgeSettings


@dataclass(slots=True)
class Plan:
    """A selector resolved, once per request: the deployments to try in order, and its policy."""

    selector: str
    candidates: list[Candidate]
    policy: Policy


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment to try, with the client-facing model it serves."""

    model: str
    provider: Provider


class Router:
    """Chains and deployments from the settings."""

    def __init__(self, settings: Settings, deployments: Mapping[str, Sequence[Provider]]) -> None:
        self._static = {model: tuple(deployments.get(model, ())) for model in settings.models}
        self._extra: dict[str, tuple[Provider, ...]] = {}
        self._deployments = dict(self._static)
        self._chains: dict[str, tuple[str, ...]] = {m: (m,) for m in settings.models}
        self._chains.update({name: tuple(steps) for name, steps in settings.chain_steps().items()})
        self._policies = {
            name: Policy(
                tiers=frozenset(step for step in steps if step in TIERS),
                first_model=next((step for step in steps if step not in TIERS), None),
                retry=settings.retry_policy(name),
                hedge=settings.hedge_policy(name),
            )
            for name, steps in self._chains.items()
        }
        # Round-robin start offsets spread load over a model's deployments.
        self._turns = {model: itertools.count() for model in self._deployments}

    def set_replicas(self, model: str, providers: Sequence[Provider]) -> None:
        """The capacity planner's replicas of `model`, routed after its configured deployments
        (round robin spreads the load over all of them)."""
        self._extra[model] = tuple(providers)
        self._deployments[model] = self._static[model] + self._extra[model]

    def replicas(self, model: str) -> tuple[Provider, ...]:
        return self._extra.get(model, ())

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

    def plan(self, selector: str) -> Plan:
        """The selector resolved: its candidates (the round robin advances) and its policy;
        NotFound for an unknown one."""
        candidates = self.candidates(selector)
        return Plan(selector, candidates, self._policies[selector])

    def candidates(self, selector: str) -> list[Candidate]:
        """Deployments in the order to try them, each at most once."""
        seen: set[str] = set()
        ordered: list[Candidate] = []
        for step in self.resolve(selector):
            if step in TIERS:
                continue
            providers = self._deployments[step]
            if not providers:
                continue  # a planner-managed model with no replica up right now
            start = next(self._turns[step]) % len(providers)
            for provider in (*providers[start:], *providers[:start]):
                if provider.name not in seen:
                    seen.add(provider.name)
                    ordered.append(Candidate(step, provider))
        return ordered
