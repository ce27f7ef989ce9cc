"""The gateway's one error hierarchy, and the only place errors become OpenAI envelopes.

    FallbackRoutingError              every exception the project raises
    ├── ConfigError                   the configuration is invalid (also a ValueError)
    ├── KubernetesError               the Kubernetes API refused or could not be reached
    ├── GatewayError                  -> rendered as {"error": {"message", "type", "code"}}
    │   (every row below, to UpstreamExhausted, is a GatewayError)
    ├── InvalidRequest        400     malformed JSON, bad identifiers, unsupported fields
    ├── SchemaError           422     well-formed JSON of the wrong shape
    ├── NotFound              404     unknown session, model or route
    ├── PayloadTooLarge       413     body over the configured limit
    ├── UpstreamRejected      400     an upstream refused the request itself (400/413/422)
    │   ├── ContextLengthExceeded     too long for every model the chain could send it to
    │   └── ContentFiltered           a content-policy refusal (code `content_filter`)
    ├── RateLimited           429     the key's requests or tokens per minute are used up
    ├── BudgetExceeded        429     the key's spending budget for the period is used up
    ├── LedgerUnavailable     503     the ledger is off or its database cannot be reached
    ├── LedgerFull            503     the ledger cannot record more (`ledger.when_full: refuse`)
    └── UpstreamExhausted     502/503/504  every deployment of the chain failed
    UpstreamError                     raised by provider adapters, never shown raw to a client
    ├── UpstreamConnectError          connection refused/reset before a response (retryable)
    │   └── UpstreamStreamCut         a stream ended early: no finish_reason and no [DONE]
    ├── UpstreamTimeout               no first token, or a stall, within its deadline (retryable)
    ├── UpstreamHTTPError             non-2xx answer; retryable for 408, 429 and 5xx
    │   ├── UpstreamContextLength     400 context_length_exceeded: another model may take it
    │   └── UpstreamContentPolicy     400 content-policy refusal
    └── UpstreamProtocolError         an answer that is not a chat completion (fails over)

Adapters translate aiohttp errors into UpstreamError with ``raise ... from exc``; the executor
turns an exhausted chain into UpstreamExhausted (returned as `Failed`, with its attempt log);
`envelope` is the single renderer used by the app.
"""

from __future__ import annotations

from typing import Any

import orjson

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class FallbackRoutingError(Exception):
    """The root of every exception the project raises."""


class ConfigError(FallbackRoutingError, ValueError):
    """The configuration is invalid; the message names every bad key and value."""


class RedisURLError(ConfigError):
    """A Redis URL that names no usable deployment (services/platform/redis_topology.py); the
    message says why, without the password."""


class KubernetesError(FallbackRoutingError, RuntimeError):
    """The Kubernetes API server refused or could not be reached (the message says which)."""


class GatewayError(FallbackRoutingError):
    """An error with a client-facing status and OpenAI error type."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = {}


class InvalidRequest(GatewayError):
    """The request cannot be understood (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class SchemaError(InvalidRequest):
    """The JSON is well formed but does not match the schema (422)."""

    status = 422
    code = "invalid_schema"


class NotFound(InvalidRequest):
    """An unknown session, model or route (404)."""

    status = 404
    code = "not_found"


class RateLimited(GatewayError):
    """The key's requests or tokens per minute are used up (429 with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Rate limit reached for this API key; retry in {retry_after}s")
        self.headers["Retry-After"] = str(retry_after)


class BudgetExceeded(GatewayError):
    """The key's spending budget for this period is used up (429 with Retry-After: the reset)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


class PayloadTooLarge(InvalidRequest):
    """The body is over the configured limit (413)."""

    status = 413
    code = "payload_too_large"


class UpstreamRejected(InvalidRequest):
    """The upstream refused the request as invalid; retrying elsewhere would not help."""

    code = "upstream_rejected"


class ContextLengthExceeded(UpstreamRejected):
    """The request is longer than the context of every model it could go to."""

    code = "context_length_exceeded"


class ContentFiltered(UpstreamRejected):
    """The upstream refused the content under its usage policy."""

    code = "content_filter"


class LedgerUnavailable(GatewayError):
    """The ledger is switched off or its database cannot be reached."""

    status = 503
    code = "ledger_unavailable"


class LedgerFull(GatewayError):
    """The ledger holds as many unrecorded records as it may, and the operator chose to refuse
    new requests rather than answer them unrecorded (`ledger.when_full: refuse`)."""

    status = 503
    code = "ledger_full"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = "5"


class UpstreamExhausted(GatewayError):
    """Every deployment the chain allowed has failed; nothing could answer."""

    status = 502
    type = "upstream_error"
    code = "upstream_exhausted"


class UpstreamError(FallbackRoutingError):
    """A failed upstream attempt, classified so the router can decide to retry or move on."""

    retryable = True

    def __init__(self, deployment: str, detail: str):
        super().__init__(f"{deployment}: {detail}")
        self.deployment = deployment
        self.detail = detail


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached or dropped the connection."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamStreamCut(UpstreamConnectError):
    """The stream ended without a finish_reason or [DONE]: a truncated answer, never a success."""


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status."""

    def __init__(
        self,
        deployment: str,
        status: int,
        detail: str,
        retry_after: float | None = None,
        *,
        code: str | None = None,
    ):
        super().__init__(deployment, f"HTTP {status}: {detail}")
        self.status = status
        self.retry_after = retry_after
        self.retryable = status in RETRYABLE_STATUSES
        self.reason = detail  # the upstream's own message, shortened and redacted
        self.code = code  # the upstream's error code, when it gave one


class UpstreamContextLength(UpstreamHTTPError):
    """The request is too long for this model; a model with a larger context may take it."""

    retryable = False


class UpstreamContentPolicy(UpstreamHTTPError):
    """The upstream refused the content under its usage policy."""

    retryable = False


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not the protocol we speak."""

    retryable = False


class HTTPClientError(FallbackRoutingError):
    """A transport failure of the outbound HTTP client (services/platform/http_client.py); the
    adapters classify it as an `UpstreamError`, the alert sender as a failed delivery."""


class HTTPConnectFailed(HTTPClientError):
    """No connection could be opened (refused, unresolvable, TLS handshake failed)."""


class HTTPDisconnected(HTTPClientError):
    """The server closed the connection before its answer was complete."""


class HTTPBadResponse(HTTPClientError):
    """Not HTTP/1.1 the client can read: a parse error, headers over the limit, an unknown
    content encoding."""


class HTTPRequestRefused(HTTPClientError):
    """A URL or header the client will not send (a CR or LF would split the request)."""


def envelope(message: str, type_: str, code: str | None) -> bytes:
    """Render the OpenAI error envelope as JSON bytes."""
    body: dict[str, Any] = {"error": {"message": message, "type": type_, "code": code}}
    return orjson.dumps(body)


def render(error: GatewayError) -> bytes:
    """Render a GatewayError as the OpenAI error envelope."""
    return envelope(error.message, error.type, error.code)
