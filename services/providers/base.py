"""What every provider adapter offers the router, and the HTTP plumbing they share.

An adapter takes an OpenAI chat-completions request (a dict, already validated) and returns a
`ChunkStream` of ``chat.completion.chunk`` dicts, checked at this boundary
(`services/providers/shapes.py`); the executor assembles whole answers from it. Failures are
raised as `services.errors.UpstreamError` subclasses so the router can classify them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from services.config import ProbeSettings
from services.errors import (
    RETRYABLE_STATUSES,
    HTTPBadResponse,
    HTTPClientError,
    UpstreamConnectError,
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from services.platform.http_client import HTTPClient, HTTPResponse
from services.platform.logs import printable
from services.providers.shapes import clean_usage

Json = dict[str, Any]


class ChunkStream(Protocol):
    """An open upstream stream: iterate for OpenAI chunks, always ``aclose`` when done.

    `malformed` counts chunks skipped as unusable; `usage_rejected` says a usage block was
    dropped because its token counts could not be trusted."""

    malformed: int
    usage_rejected: bool

    def __aiter__(self) -> AsyncIterator[Json]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """One deployment's adapter."""

    name: str
    upstream_model: str

    async def open_stream(self, request: Json) -> ChunkStream:
        """Send the request streamed (usage asked for); return once the upstream accepted it.

        A server that ignores ``stream: true`` and answers one JSON completion is accepted: its
        answer comes back as the chunks a stream would have carried."""
        ...

    async def probe(self) -> None:
        """A cheap request that proves the deployment answers; UpstreamError when it does not.
        The caller bounds it with `asyncio.timeout`."""
        ...


class HTTPAdapter:
    """What every HTTP adapter holds: its names, the shared session, timeouts, URL and headers."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        upstream_model: str,
        api_key: str | None,
        session: HTTPClient,
        connect_timeout: float | None,
        probe: ProbeSettings | None = None,
        max_line_bytes: int = 1_048_576,
        max_response_bytes: int = 10_485_760,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.upstream_model = upstream_model
        base = base_url.rstrip("/")
        self._url = self.endpoint(base)
        self._probe = probe or ProbeSettings()
        self._probe_url = probe_url(base, self._probe.path, self.models_endpoint(base))
        self._headers = {"Content-Type": "application/json", **self.auth_headers(api_key)}
        self._session = session
        self._connect_timeout = connect_timeout
        self._max_line = max_line_bytes
        self._max_response = max_response_bytes
        self._secrets = tuple(s for s in (api_key, *secrets) if s)

    def endpoint(self, base_url: str) -> str:
        """The chat URL under `base_url` (no trailing slash)."""
        raise NotImplementedError

    def models_endpoint(self, base_url: str) -> str:
        """The model-list URL under `base_url`: free to call, the default probe."""
        raise NotImplementedError

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that carry the key and protocol version."""
        raise NotImplementedError

    async def probe(self) -> None:
        """Call the probe URL. With no `expect` list only an unreachable, timing-out or
        408/429/5xx-answering server fails: a 401 or 404 still proves it is up."""
        try:
            resp = await self._session.request(
                self._probe.method, self._probe_url, headers=self._headers,
                connect_timeout=self._connect_timeout,
            )  # fmt: skip
        except HTTPClientError as exc:
            raise UpstreamConnectError(self.name, f"health probe: {type(exc).__name__}") from exc
        status = resp.status
        try:  # the status is the answer; a short body is read so the connection can be reused
            await resp.read(65_536)
        except HTTPClientError:
            pass  # the status came back: a body cut short does not make the server unhealthy
        finally:
            resp.release()
        expect = self._probe.expect
        if (status not in expect) if expect else (status in RETRYABLE_STATUSES):
            raise UpstreamHTTPError(self.name, status, "health probe failed")

    async def _post(self, payload: Json) -> HTTPResponse:
        return await post(
            self._session, self.name, self._url, orjson.dumps(payload), self._headers,
            self._connect_timeout, self._secrets,
        )  # fmt: skip


def probe_url(base_url: str, path: str | None, default: str) -> str:
    """Where to probe: `default`, a path from the server's root (`/health`), or under base_url."""
    if path is None:
        return default
    if path.startswith("/"):
        parts = urlsplit(base_url)
        return f"{parts.scheme}://{parts.netloc}{path}"
    return f"{base_url}/{path}"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Parse a numeric Retry-After header (HTTP dates are rare from LLM APIs and ignored)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# Whatever looks like a credential in an upstream's error text (some echo our headers back).
CREDENTIAL_RE = re.compile(
    r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?|api[_-]?key[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;]+|\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}"
)
CONTEXT_RE = re.compile(
    r"(?i)context.{0,10}(length|window)|maximum context|prompt is too long|too many tokens"
    r"|input is too long|reduce the length"
)
POLICY_RE = re.compile(r"(?i)content.{0,12}(policy|filter|management)|safety system|flagged by")
CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
POLICY_CODES = frozenset({"content_filter", "content_policy_violation"})


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without anything that looks like a credential, nor any of `secrets`, nor a control
    character (upstream text reaches log lines: it must not forge one)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return printable(CREDENTIAL_RE.sub(lambda m: (m.group(1) or "") + "***", text))


def error_fields(raw: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, type) of an upstream error body (OpenAI, Anthropic or plain text)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace"), None, None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        code, kind = err.get("code"), err.get("type")
        return (
            str(message)[:300] if message is not None else "",
            str(code) if isinstance(code, str | int) else None,
            str(kind) if isinstance(kind, str) else None,
        )
    if isinstance(err, str):
        return err[:300], None, None
    return raw[:300].decode("utf-8", "replace"), None, None


def upstream_http_error(
    deployment: str,
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    secrets: tuple[str, ...] = (),
) -> UpstreamHTTPError:
    """Classify a non-2xx answer: context too long and content policy are told apart, because
    another model may take the first and nobody should retry the second."""
    message, code, kind = error_fields(raw)
    message = redact(message, secrets)
    retry_after = retry_after_seconds(headers)
    if status in {400, 413, 422}:
        if code in CONTEXT_CODES or CONTEXT_RE.search(message):
            return UpstreamContextLength(deployment, status, message, retry_after, code=code)
        if code in POLICY_CODES or kind in POLICY_CODES or POLICY_RE.search(message):
            return UpstreamContentPolicy(deployment, status, message, retry_after, code=code)
    return UpstreamHTTPError(deployment, status, message, retry_after, code=code)


async def post(
    session: HTTPClient,
    deployment: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    connect_timeout: float | None,
    secrets: tuple[str, ...] = (),
) -> HTTPResponse:
    """POST and return the response once its status is 2xx; classify every failure."""
    try:
        resp = await session.request(
            "POST", url, headers=headers, body=body, connect_timeout=connect_timeout
        )
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "timed out before the response started") from exc
    except HTTPBadResponse as exc:
        raise UpstreamProtocolError(deployment, str(exc)) from exc
    except HTTPClientError as exc:
        raise UpstreamConnectError(deployment, f"{type(exc).__name__}: {exc}") from exc
    if 300 <= resp.status < 400:  # redirects are not followed (docs/resilience.md)
        resp.close()
        location = resp.headers.get("location", "(no Location)")[:200]
        text = f"redirected to {location}, not followed: set base_url to the final URL"
        raise UpstreamHTTPError(deployment, resp.status, redact(text, secrets))
    if resp.status >= 400:
        try:
            raw = await resp.read(64 * 1024)
        except (TimeoutError, HTTPClientError):
            raw = b""
        finally:
            resp.close()  # not release(): the rest of a large error body is not worth reading
        raise upstream_http_error(deployment, resp.status, raw, resp.headers, secrets)
    return resp


def is_json(resp: HTTPResponse) -> bool:
    """Whether the upstream answered one JSON document (it ignored ``stream: true``)."""
    return resp.content_type == "application/json"


async def read_json(resp: HTTPResponse, deployment: str, limit: int) -> Json:
    """Read a whole JSON object of at most `limit` bytes, translating every failure."""
    parts: list[bytes] = []
    size = 0
    try:
        async for block in resp.iter_any():
            size += len(block)
            if size > limit:
                raise UpstreamProtocolError(deployment, f"answer larger than {limit} bytes")
            parts.append(block)
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "timed out reading the response") from exc
    except HTTPBadResponse as exc:
        raise UpstreamProtocolError(deployment, str(exc)) from exc
    except HTTPClientError as exc:
        raise UpstreamConnectError(deployment, f"{type(exc).__name__}: {exc}") from exc
    try:
        data = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(deployment, "response is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamProtocolError(deployment, "response is not a JSON object")
    return data


class SSEParser:
    """Splits a text/event-stream body into (event, data) pairs, as the bytes arrive.

    Implements the parts of the SSE grammar LLM APIs use: ``event:`` and (possibly several)
    ``data:`` lines, dispatched on a blank line; comments (``:``) and ``id:``/``retry:`` ignored.
    Lines are split here, as the blocks arrive; a line longer than `max_line` is a protocol
    error. Synchronous, so that a block
    holding many events costs one trip through the async machinery, not one per event.
    """

    __slots__ = ("_data", "_deployment", "_event", "_max", "_pending")

    def __init__(self, deployment: str, max_line: int) -> None:
        self._deployment = deployment
        self._max = max_line
        self._event = "message"
        self._data: list[bytes] = []
        self._pending = b""

    def feed(self, block: bytes) -> list[tuple[str, bytes]]:
        """The events completed by `block`."""
        lines = (self._pending + block).split(b"\n") if self._pending else block.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self._max:
            raise UpstreamProtocolError(self._deployment, f"an SSE line over {self._max} bytes")
        events: list[tuple[str, bytes]] = []
        for raw_line in lines:
            line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
            if not line:
                if self._data:
                    events.append((self._event, b"\n".join(self._data)))
                self._event, self._data = "message", []
            elif len(line) > self._max:
                raise UpstreamProtocolError(self._deployment, f"an SSE line over {self._max} bytes")
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
        return events

    def finish(self) -> list[tuple[str, bytes]]:
        """The last event, when the body ends without the blank line that dispatches it."""
        if self._pending.startswith(b"data:"):
            pending = self._pending
            self._data.append(pending[6:] if pending[5:6] == b" " else pending[5:])
        self._pending = b""
        return [(self._event, b"\n".join(self._data))] if self._data else []


async def sse_batches(
    resp: HTTPResponse, deployment: str, max_line: int, max_total: int = 10_485_760
) -> AsyncGenerator[list[tuple[str, bytes]], None]:
    """The (event, data) pairs of a text/event-stream body, a list per block received;
    transport errors are classified, and a body over `max_total` bytes is a protocol error."""
    parser = SSEParser(deployment, max_line)
    received = 0
    try:
        async for block in resp.iter_any():
            received += len(block)
            if received > max_total:
                raise UpstreamProtocolError(deployment, f"answer larger than {max_total} bytes")
            events = parser.feed(block)
            if events:
                yield events
        events = parser.finish()
        if events:
            yield events
    except TimeoutError as exc:
        raise UpstreamTimeout(deployment, "stream stalled") from exc
    except HTTPBadResponse as exc:
        raise UpstreamProtocolError(deployment, str(exc)) from exc
    except HTTPClientError as exc:
        raise UpstreamConnectError(deployment, f"stream broke: {type(exc).__name__}") from exc


class ResponseChunkStream:
    """Owns an upstream response and the async iterator that translates it into chunks."""

    def __init__(
        self,
        resp: HTTPResponse,
        translate: Callable[[HTTPResponse, ResponseChunkStream], AsyncIterator[Json]],
    ) -> None:
        self._resp = resp
        self.malformed = 0
        self.usage_rejected = False
        self._chunks = translate(resp, self)

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._chunks

    def usage(self, usage: Any) -> Json | None:
        """A usage block made trustworthy, or None (and flagged) when it cannot be."""
        if usage is None:
            return None
        cleaned = clean_usage(usage)
        if cleaned is None:
            self.usage_rejected = True
        return cleaned

    async def aclose(self) -> None:
        """Stop translating and give the connection back (or drop it, if mid-body)."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        self._resp.release()


__all__ = [
    "ChunkStream",
    "HTTPAdapter",
    "Json",
    "Provider",
    "ResponseChunkStream",
    "UpstreamError",
    "is_json",
    "post",
    "read_json",
    "sse_batches",
]
