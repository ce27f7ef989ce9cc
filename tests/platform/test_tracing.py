"""OpenTelemetry: spans exported over OTLP/HTTP by the official SDK to a local collector stand-in
that decodes the real protobuf wire format; the caller's trace is continued, each request has a
SERVER span with the GenAI attributes and each upstream attempt a CLIENT child span."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services.app import create_app
from services.config import TracingSettings
from services.platform.tracing import traces_endpoint
from tests.alerts.receiver import Receiver
from tests.helpers import ROOT, GatewayServer, SimProcess, http, openai_model, settings_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def exported_spans(collector: Receiver) -> list[Any]:
    spans = []
    for headers, body in collector.deliveries:
        assert headers["content-type"] == "application/x-protobuf"
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "fallback-routing"
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return spans


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_a_failover_is_one_trace_continued_from_the_caller(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> None:
    models = {"primary": openai_model(primary.openai_url, "primary-upstream"),
              "secondary": openai_model(secondary.openai_url, "secondary-upstream")}  # fmt: skip
    with Receiver() as collector:
        settings = settings_for(redis_url, tmp_path / "logs", models,
                                {"default": ["primary", "secondary"]},
                                resilience={"health": {"enabled": False}},
                                otel={"endpoint": f"http://127.0.0.1:{collector.port}"})  # fmt: skip
        primary.behave(failure_rate=1.0)
        body = {"model": "default", "messages": [{"role": "user", "content": "trace me"}],
                "max_tokens": 64, "temperature": 0.5}  # fmt: skip
        with GatewayServer(create_app(settings, environ={})) as gateway:
            status, _, _ = http("POST", gateway.base + "/v1/chat/completions", body,
                                {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})  # fmt: skip
            assert status == 200
        # Leaving the server closed the gateway, whose tracer exported what it held.
        spans = exported_spans(collector)
    assert collector.deliveries[0][0]["content-type"] == "application/x-protobuf"
    assert {span.trace_id.hex() for span in spans} == {TRACE_ID}, "the caller's trace continued"
    server = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert len(server) == 1 and server[0].parent_span_id.hex() == PARENT_ID
    request = attributes(server[0])
    assert server[0].name == "chat default"
    assert request["gen_ai.operation.name"] == "chat"
    assert request["gen_ai.request.model"] == "default"
    assert request["gen_ai.response.model"] == "secondary"
    assert (
        request["gen_ai.request.max_tokens"] == 64 and request["gen_ai.request.temperature"] == 0.5
    )
    assert request["gen_ai.usage.input_tokens"] > 0 and request["gen_ai.usage.output_tokens"] > 0
    assert request["fallback_routing.fallback"] is True
    assert request["fallback_routing.route"] == "fallback"
    assert request["fallback_routing.attempts"] == 4

    attempts = sorted((s for s in spans if s.kind == s.SPAN_KIND_CLIENT),
                      key=lambda s: attributes(s)["fallback_routing.attempt"])  # fmt: skip
    assert [attributes(s)["fallback_routing.deployment"] for s in attempts] == [
        "primary:0",
        "primary:0",
        "primary:0",
        "secondary:0",
    ]
    assert all(s.parent_span_id == server[0].span_id for s in attempts)
    first, last = attributes(attempts[0]), attributes(attempts[-1])
    assert attempts[0].name == "chat primary-upstream"
    assert first["gen_ai.provider.name"] == "openai" and first["server.address"] == "127.0.0.1"
    assert first["error.type"] == "UpstreamHTTPError" and first["fallback_routing.retry"] == 0
    assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR
    assert attributes(attempts[2])["fallback_routing.retry"] == 2
    assert first["fallback_routing.breaker_state"] == "closed"
    assert last["fallback_routing.answered_by"] == "secondary:0" and "error.type" not in last


def test_off_unless_an_endpoint_is_configured() -> None:
    settings = TracingSettings()
    assert traces_endpoint(settings, {}) is None
    assert traces_endpoint(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    assert (
        traces_endpoint(settings, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"})
        == "http://c/t"
    )
    configured = TracingSettings(endpoint="http://collector:4318")
    assert traces_endpoint(configured, {}) == "http://collector:4318/v1/traces"
    assert traces_endpoint(configured, {"OTEL_SDK_DISABLED": "true"}) is None


def test_without_tracing_the_sdk_is_never_imported() -> None:
    """Off, the gateway loads neither the tracing SDK nor the exporter. (FastAPI imports the
    OpenTelemetry API, whose native instrumentation the app switches off, and redis-py the SDK's
    metrics when present; neither traces anything.)"""
    code = ("import sys, services.app, services.gateway, services.api.chat, "
            "services.routing.executor; "
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
            "'opentelemetry.exporter', 'opentelemetry.proto'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]"
