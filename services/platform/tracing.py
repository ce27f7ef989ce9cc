"""OpenTelemetry traces (docs/tracing.md), off unless configured.

On when `otel.endpoint` is set, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
`OTEL_EXPORTER_OTLP_ENDPOINT` is (and `OTEL_SDK_DISABLED` is not `true`). Spans go through the
official SDK's batch processor to its OTLP/HTTP (protobuf) exporter, which reads the other standard
variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`, certificates);
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER(_ARG)` win over the
config's `service_name` and `sample_ratio`.

Off, nothing is imported and the request path pays one `is None` test per request and per
attempt: the SDK is loaded only by `open_tracing` when an endpoint is set.

Spans, with the GenAI semantic conventions:

    chat <selector>        SERVER, one per chat request, child of an incoming `traceparent`;
                           ended with the turn's record (a stream's at its last event)
      chat <model>         CLIENT, one per upstream attempt (a hedged attempt is one span)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from services import __version__
from services.config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer


def traces_endpoint(settings: TracingSettings, environ: Mapping[str, str]) -> str | None:
    """Where spans go: the config's endpoint (+ /v1/traces), else the OTEL_* variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.endpoint:
        base = settings.endpoint
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return base.rstrip("/") + "/v1/traces"
    return None


@dataclass
class Tracing:
    """The tracer of one process, and the request spans still open (keyed by request id)."""

    provider: TracerProvider
    tracer: Tracer
    open_requests: dict[str, Span] = field(default_factory=dict)

    def parent_of(self, headers: Mapping[str, str]) -> Context:
        """The caller's trace (W3C `traceparent`/`tracestate`), if it sent one."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator().extract(carrier=headers)

    async def close(self) -> None:
        """Export what is buffered, then stop (the SDK's flush blocks: run in a thread)."""
        for span in self.open_requests.values():
            span.end()
        self.open_requests.clear()
        await asyncio.to_thread(self.provider.shutdown)


def open_tracing(settings: TracingSettings, environ: Mapping[str, str]) -> Tracing | None:
    """The tracer, or None when tracing is off."""
    endpoint = traces_endpoint(settings, environ)
    if endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes: dict[str, Any] = {}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = settings.service_name
    attributes["service.version"] = __version__
    sampler = None
    if not environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler,
                              shutdown_on_exit=False)  # fmt: skip
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    logger.info("OpenTelemetry traces to {}", endpoint.split("?")[0])
    return Tracing(provider, provider.get_tracer("fallback-routing", __version__))
