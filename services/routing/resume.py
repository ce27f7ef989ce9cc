"""A stream that broke after its first content reached the client: what the breaker, the health
monitor and the attempt log hear of it, and its continuation on the next usable deployment of its
plan (by assistant prefill where the deployment supports it, else by instruction:
services/routing/continuation.py builds the request, services/api/streaming.py relays the rest)."""

from __future__ import annotations

from loguru import logger

from services.errors import UpstreamError
from services.resilience.breaker import Admission
from services.routing.attempt import breaker_outcome
from services.routing.continuation import continuation_request
from services.routing.deployment_gate import DeploymentGate
from services.routing.outcomes import Attempt, Opened, RoutedStream
from services.routing.router import Candidate


async def stream_broke(gate: DeploymentGate, routed: RoutedStream, failure: UpstreamError) -> None:
    """Count the broken stream against its deployment, which no continuation will go back to."""
    name = routed.deployment
    gate.stats.count("streams_interrupted")
    if name is None:
        return
    routed.broken.add(name)
    model = gate.model_of(name, routed.model)
    routed.log.append(Attempt(name, model, False, 0.0, 0, type(failure).__name__, True))
    gate.health.observe(name, False, 0.0)
    await gate.breakers.record(name, breaker_outcome(failure))


async def resume(
    gate: DeploymentGate, candidates: list[Candidate], routed: RoutedStream, sent_text: str
) -> Opened | None:
    """Open the first of `candidates` that is usable, has not broken this stream and accepts the
    continuation; None if none could (none left, the retry budget spent, or each one failed)."""
    for candidate in candidates:
        name = candidate.provider.name
        if name in routed.broken or not gate.usable(name):
            continue
        prefill = gate.prefill(name)
        request = continuation_request(routed.request, sent_text, prefill=prefill)
        if not gate.budget.try_withdraw():
            gate.stats.count("budget_exhausted")
            return None
        admission = await gate.admit(name)
        if admission is Admission.REJECT:
            continue
        probe = admission is Admission.PROBE
        started = gate.clock()
        try:
            opened = await gate.open(candidate, request, gate.ttft_seconds(name))
        except UpstreamError as exc:
            await gate.record_failure(candidate, exc, probe, gate.clock() - started, routed.log)
            logger.warning("continuing the stream on {} failed: {}", name, exc)
            routed.broken.add(name)
            continue
        except BaseException:
            await gate.release(name, probe)
            raise
        elapsed = gate.clock() - started
        await gate.succeeded(name, probe, elapsed)
        routed.log.append(Attempt(name, candidate.model, True, elapsed, 200))
        gate.stats.count("streams_resumed")
        logger.info("stream continued on {} ({})", name, "prefill" if prefill else "instruction")
        opened.prefill = prefill
        return opened
    return None
