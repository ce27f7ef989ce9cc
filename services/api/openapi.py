"""The OpenAPI document: every error in the OpenAI envelope, and the plain-Starlette request
routes (services/api/chat.py) described by hand, since FastAPI does not see them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.api.responses import JSON
from services.api.schemas import InitiateCallRequest

ERROR_ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERROR_RESPONSES = {
    "400": "Malformed JSON or an invalid request",
    "404": "Unknown session, model or chain",
    "413": "Body larger than api.max_body_bytes",
    "422": "Body does not match the schema",
    "502": "Every upstream of the chain failed",
    "503": "No upstream available, or the session store is unreachable",
    "504": "Every upstream timed out",
}
# Any endpoint can answer these (the middleware's checks, the envelope for unknown parameters).
COMMON_ERROR_RESPONSES = {
    "400": "Invalid request",
    "401": "Missing or unknown API key (when keys are configured)",
    "403": "A client key on an admin endpoint",
    "404": "Unknown resource",
    "413": "Body larger than api.max_body_bytes",
    "422": "Parameters or body do not match the schema",
    "429": "Rate limit reached for this key (Retry-After says when to retry)",
    "431": "Request headers larger than api.max_header_bytes",
    "503": "A dependency (the ledger database) is unavailable",
}
PLAIN_TEXT_ENDPOINTS = {
    "/metrics": "Prometheus text exposition format",
    "/api/metrics/prometheus": "Prometheus text exposition format",
}


def document_lean_routes(app: FastAPI, routes: list[tuple[str, str, type[BaseModel]]]) -> None:
    """Add the plain-Starlette POST routes, with their bodies, to the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        _, defs = models_json_schema(
            [(body, "validation") for _, _, body in routes],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        components["ErrorEnvelope"] = ERROR_ENVELOPE_SCHEMA
        error = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
        for doc, path, body in routes:
            schema["paths"][path] = {
                "post": {
                    "summary": doc.split("\n")[0],
                    "operationId": path.strip("/").replace("/", "_"),
                    "requestBody": {
                        "required": body is not InitiateCallRequest,
                        "content": {
                            JSON: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
                        },
                    },
                    "responses": {
                        "200": {"description": "OK (text/event-stream when stream is true)"},
                        **{
                            code: {"description": text, **error}
                            for code, text in ERROR_RESPONSES.items()
                        },
                    },
                }
            }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, text in COMMON_ERROR_RESPONSES.items():
                    # Replaces FastAPI's default 422 (its own shape): every error is the envelope.
                    if code == "422" or code not in responses:
                        responses[code] = {"description": text, **error}
                if path in PLAIN_TEXT_ENDPOINTS:
                    responses["200"] = {
                        "description": PLAIN_TEXT_ENDPOINTS[path],
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
