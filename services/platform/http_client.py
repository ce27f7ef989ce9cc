"""The outbound HTTP client: one keep-alive HTTP/1.1 pool, on asyncio and httptools. Each API
process has one for its upstreams (`services/gateway.py`), and one for its alert webhooks.

Every chat turn makes exactly one upstream call, and with aiohttp that call was the largest
single cost of a turn: 129 Python calls and about 25 % of a worker's Python time, 296 µs of CPU
per request against 48 µs for this client in the same micro-benchmark (bench/RESULTS.md,
"an upstream client of our own"). Parsing is httptools' (llhttp, the parser of Node.js and of
uvicorn, which serves our own side); what is written here is only what an adapter needs and
aiohttp spent its time on: a request head, a pool of idle connections, and a body handed over
as it arrives. It is deliberately small:

- HTTP/1.1 only, over TCP or TLS (the system's default trust store, SNI, certificate and host
  name checked). No proxies and no cookies, as the aiohttp session it replaces. Redirects are
  not followed (aiohttp followed them): a chat POST that redirects means a wrong `base_url`, and
  following it would resend the prompt and the key elsewhere; the 3xx is reported like any
  other error status, with its Location in the log.
- A connection is reused only when its previous response was read to the end and neither side
  said ``Connection: close``; one that dies idle in the pool leaves it at once.
- A reused connection that the server had already closed (its keep-alive timer beat ours) is
  retried once on a fresh connection, when no byte of an answer came back: the request never
  reached the application, and it must not count against the deployment's breaker.
- gzip and deflate bodies are inflated as they are read, in bounded pieces, so a compressed
  bomb is stopped by the adapters' size limit like any other oversize answer.
- A response that arrives faster than it is read pauses the socket (``max_buffered_bytes``).
- Deadlines other than the connect timeout are the caller's (the executor's watchdog cancels a
  read): a response dropped before its end closes its connection rather than returning it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Final, cast, overload
from urllib.parse import urlsplit

import httptools

from services.errors import (
    HTTPBadResponse,
    HTTPConnectFailed,
    HTTPDisconnected,
    HTTPRequestRefused,
)

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What every request carries, as aiohttp sent it (no User-Agent: the session it replaces skipped
# it). Bodies are always sent with a Content-Length, never chunked.
STANDARD_HEADERS: Final = "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
INFLATE_PIECE: Final = 65_536  # decompressed bytes handed over per step
BAD_NAME: Final = re.compile(r"[\r\n\0: ]")
BAD_VALUE: Final = re.compile(r"[\r\n\0]")  # each would end the header early


class Headers(dict[str, str]):
    """Response headers by lower-case name; `get` and `[]` take any case (HTTP names are
    case-insensitive). A repeated header keeps its values joined with ", " (RFC 9110 5.3)."""

    @overload  # type: ignore[override]
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class HTTPResponse:
    """One answer: status and headers once they arrived, then the body as it arrives.

    The owner must end it with `release` (the connection goes back to the pool if the body was
    complete) or `close` (the connection is dropped); both are idempotent."""

    __slots__ = (
        "_blocks",
        "_buffered",
        "_complete",
        "_conn",
        "_error",
        "_inflater",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, headers: Headers) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.headers = headers
        self._blocks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._inflater: zlib._Decompress | None = None
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif encoding not in ("identity", ""):
            self._error = HTTPBadResponse(f"unsupported content-encoding {encoding[:40]!r}")

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's default when absent)."""
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes, decoded, in blocks as they arrive; raises `HTTPClientError`
        when the connection breaks before the end."""
        while True:
            if self._blocks:
                block = self._blocks.popleft() if len(self._blocks) == 1 else self._drain()
                self._buffered -= len(block)
                if self._buffered <= 0 and self._conn is not None:
                    self._conn.resume()
                if self._inflater is None:
                    yield block
                else:
                    for piece in self._inflate(block):
                        yield piece
            elif self._error is not None:
                raise self._error
            elif self._complete:
                if self._inflater is not None:
                    tail = self._inflater.flush()
                    self._inflater = None
                    if tail:
                        yield tail
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def _drain(self) -> bytes:
        block = b"".join(self._blocks)
        self._blocks.clear()
        return block

    def _inflate(self, block: bytes) -> Iterator[bytes]:
        inflater = self._inflater
        assert inflater is not None
        data = block
        while data:
            try:
                piece = inflater.decompress(data, INFLATE_PIECE)
            except zlib.error as exc:
                raise HTTPBadResponse("a compressed body that does not inflate") from exc
            data = inflater.unconsumed_tail
            if piece:
                yield piece

    async def read(self, limit: int) -> bytes:
        """At most `limit` bytes of the body (an error answer's text)."""
        parts: list[bytes] = []
        size = 0
        async for block in self.iter_any():
            parts.append(block)
            size += len(block)
            if size >= limit:
                break
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when the answer was
        read to its end and may be reused, else it is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(reusable=self._complete and self._error is None)

    def close(self) -> None:
        """Done with the answer, and its connection is dropped whatever its state."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(reusable=False)

    # Called by the connection as bytes arrive.
    def _feed(self, block: bytes) -> int:
        self._blocks.append(block)
        self._buffered += len(block)
        self._wake()
        return self._buffered

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One socket to one origin, carrying one exchange at a time."""

    def __init__(self, pool: HTTPClient, origin: tuple[str, str, int]) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.answered = False  # a byte of the current exchange's answer came back
        self._head_waiter: asyncio.Future[HTTPResponse] | None = None
        self._response: HTTPResponse | None = None
        self._header_list: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._ends_at_close = False
        self._reading_paused = False
        self._head_only = False
        self._may_keep = False  # the last answer ended and allowed the connection's reuse
        self._problem: Exception | None = None

    # --- the exchange, driven by the pool ---

    async def exchange(self, head: bytes, body: bytes, *, head_only: bool) -> HTTPResponse:
        """Send one request; return once its answer's status and headers arrived."""
        assert self.transport is not None
        self.answered = False
        self._head_only = head_only
        self._may_keep = False
        self._response = None
        self._header_list = []
        self._header_bytes = 0
        waiter: asyncio.Future[HTTPResponse] = asyncio.get_running_loop().create_future()
        self._head_waiter = waiter
        self.transport.writelines((head, body) if body else (head,))
        try:
            return await waiter
        finally:
            self._head_waiter = None

    def finished(self, *, reusable: bool) -> None:
        """The answer's owner is done with it."""
        self._response = None
        self._pool.give_back(self, reusable and not self.closed and self._keep_alive())

    def resume(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._pool.forget(self)  # now, not when the loop gets to connection_lost

    def _keep_alive(self) -> bool:
        return self._may_keep and not self._head_only and not self._ends_at_close

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not registered as an asyncio.Transport: no isinstance check
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._head_waiter is None and self._response is None:
            self.abort()  # bytes nobody asked for (an idle connection): the stream is unusable
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._problem = HTTPBadResponse("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            self._problem = HTTPBadResponse(f"malformed HTTP from the upstream: {exc}"[:200])
        if self._problem is not None:
            problem, self._problem = self._problem, None
            self._break(problem)
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost finishes or fails the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and self._ends_at_close and exc is None:
            response._finish()  # a body delimited by the end of the connection
        else:
            self._break(HTTPDisconnected("the upstream closed the connection"))
        self._pool.forget(self)

    # --- httptools callbacks (they must not raise: httptools would wrap it) ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._pool.max_header_bytes and self._problem is None:
            self._problem = HTTPBadResponse(
                f"response headers over {self._pool.max_header_bytes} bytes"
            )
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103): the real one follows
            self._header_list = []
            self._header_bytes = 0
            return
        fields: dict[str, str] = {}
        for raw_name, raw_value in self._header_list:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip()
            known = fields.get(name)
            fields[name] = value if known is None else f"{known}, {value}"
        self._header_list = []
        self._ends_at_close = (
            "content-length" not in fields
            and "chunked" not in fields.get("transfer-encoding", "").lower()
            and status not in (204, 304)
            and not self._head_only
        )
        headers = Headers(fields)
        response = self._response = HTTPResponse(self, status, headers)
        if self._head_only:  # a HEAD answer has no body, whatever its Content-Length says
            response._finish()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None or self._head_only:
            return
        if response._feed(body) > self._pool.max_buffered_bytes and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._status_is_interim():
            return
        # Asked here: once this callback returns, llhttp has reset and says False.
        self._may_keep = self._parser.should_keep_alive()
        if self._response is not None:
            self._response._finish()

    def _status_is_interim(self) -> bool:
        return 100 <= self._parser.get_status_code() < 200

    def _break(self, error: Exception) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._response is not None:
            self._response._fail(error)


class HTTPClient:
    """The keep-alive pool: at most `max_connections` exchanges at once (others wait for a
    slot), idle connections kept `keepalive_seconds` per origin."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_seconds: float = 15.0,
        max_header_bytes: int = 65_536,
        max_buffered_bytes: int = 262_144,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self._limit = max_connections
        self._keepalive = keepalive_seconds
        self._ssl = ssl_context
        self._clock = clock
        self._busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, tuple[tuple[str, str, int], str, str]] = {}
        self._closed = False

    @property
    def connections(self) -> int:
        """Open connections, busy or idle (for tests and diagnostics)."""
        return len(self._open)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes = b"",
        connect_timeout: float | None = None,
    ) -> HTTPResponse:
        """Send the request and return its answer once status and headers arrived.

        Raises `HTTPClientError` (connect, disconnect, malformed answer) and TimeoutError
        (the connect took longer than `connect_timeout`)."""
        if self._closed:
            raise HTTPConnectFailed("the upstream client is closed")
        origin, target, host = self._target(url)
        head = request_head(method, target, host, headers, len(body) if body else None)
        await self._take_slot()
        conn = None
        try:
            conn = self._reuse(origin)
            if conn is not None:
                try:
                    return await conn.exchange(head, body, head_only=method == "HEAD")
                except HTTPDisconnected:
                    if conn.answered:
                        raise
                    # The server had closed it while idle; the request never reached it.
            conn = await self._connect(origin, connect_timeout)
            return await conn.exchange(head, body, head_only=method == "HEAD")
        except BaseException:
            if conn is not None:
                conn.abort()
            self._free_slot()
            raise

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' connection_lost run

    # --- called by connections ---

    def give_back(self, conn: _Connection, reusable: bool) -> None:
        """An exchange ended: keep the connection for the next, or close it; free the slot."""
        if reusable and not self._closed:
            conn.idle_since = self._clock()
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.abort()
        self._free_slot()

    def forget(self, conn: _Connection) -> None:
        """The connection closed (either side): it must not be handed out again."""
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    # --- internals ---

    def _target(self, url: str) -> tuple[tuple[str, str, int], str, str]:
        """(origin, request target, Host header) of `url`, parsed once per URL."""
        known = self._targets.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise HTTPRequestRefused(f"not an http(s) URL: {url[:100]!r}")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise HTTPRequestRefused(f"bad port in {url[:100]!r}") from exc
        host = parts.hostname
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc = f"{netloc}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in target + netloc for c in "\r\n\0 "):
            raise HTTPRequestRefused(f"a URL this client will not send: {url[:100]!r}")
        parsed = ((scheme, host, port), target, netloc)
        if len(self._targets) < 1024:  # the configured deployments' few URLs
            self._targets[url] = parsed
        return parsed

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.abort()
        return None

    async def _connect(
        self, origin: tuple[str, str, int], connect_timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        tls = scheme == "https"
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn, host, port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )  # fmt: skip
        except OSError as exc:  # refused, unreachable, unresolvable, TLS (ssl.SSLError)
            raise HTTPConnectFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
        self._open.add(conn)
        if self._closed:
            conn.abort()
            raise HTTPConnectFailed("the upstream client is closed")
        return conn

    async def _take_slot(self) -> None:
        if self._busy < self._limit and not self._waiting:
            self._busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # the slot is handed over by _free_slot, still counted as busy
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed over just as this request was cancelled
            else:
                self._waiting.remove(waiter)
            raise

    def _free_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._busy -= 1


def request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], length: int | None
) -> bytes:
    """The request line and headers; a CR, LF or NUL in a header would split the request."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{STANDARD_HEADERS}"]
    for name, value in headers.items():
        if not name or BAD_NAME.search(name) or BAD_VALUE.search(value):
            raise HTTPRequestRefused(f"header {name[:40]!r} holds a character HTTP forbids")
        lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HTTPRequestRefused("a header value that is not Latin-1 text") from exc


__all__ = [
    "HTTPClient",
    "HTTPResponse",
    "Headers",
    "request_head",
]
