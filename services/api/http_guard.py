"""uvicorn's httptools protocol with the two limits it lacks: the request head's size, and how
long a client may take to send its request.

uvicorn buffers a request line and headers of any size before the app sees them (a 64 MB header
was read whole before its 431), and it has no deadline for a request that arrives slowly: a
keep-alive timeout is cancelled by any byte, so 100 slowloris connections sending one byte now
and then were never closed. This protocol feeds the parser at most `api.max_header_bytes` + 8 KiB
(the request line's allowance) before the end of the headers, answering 431 past it, and gives
each request `api.client_timeout_seconds` from its first byte (for a connection's first request:
from the connection) to its last, answering 408 and closing when it runs out; a connection that
sends nothing is closed then too. One timer per request, armed and cancelled: the limits are
read once per process.

The limits come from the environment (`FR_API_MAX_HEADER_BYTES`, `FR_API_CLIENT_TIMEOUT_SECONDS`),
which `main.py api` sets from the settings before uvicorn starts its workers: uvicorn builds the
protocol itself, in every worker, and passes it nothing of ours.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.errors import envelope

# The request line's share of the head, beyond the headers' own limit.
REQUEST_LINE_ALLOWANCE = 8192


@functools.cache
def head_limit() -> int:
    """Bytes a request line and its headers may take together."""
    return int(os.environ.get("FR_API_MAX_HEADER_BYTES", "16384")) + REQUEST_LINE_ALLOWANCE


@functools.cache
def client_timeout() -> float:
    """Seconds a client has to send one whole request."""
    return float(os.environ.get("FR_API_CLIENT_TIMEOUT_SECONDS", "30"))


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a head-size limit and a per-request deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = head_limit()
        self._deadline_seconds = client_timeout()
        self._head_bytes = 0
        self._in_head = True  # between a request's first byte and the end of its headers
        self._receiving = False  # between a request's first byte and its last
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        allowance = self._max_head - self._head_bytes
        if len(data) <= allowance:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        self._head_bytes += allowance
        super().data_received(data[:allowance])
        if self._in_head:  # no end of headers within the limit: refuse before reading more
            too_large = f"request line and headers are larger than {self._max_head} bytes"
            self._refuse(431, "headers_too_large", too_large)
            return
        if not self.transport.is_closing():
            super().data_received(data[allowance:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._receiving, self._head_bytes = True, True, 0
        if self._timer is None:  # a keep-alive connection's next request (the first is armed)
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()  # the answer may take as long as it takes: the app's deadlines rule
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Idle after an answer: uvicorn's keep-alive timeout closes the connection; the first
        # byte of a next request arms this deadline again (on_message_begin).
        super().on_response_complete()
        self._in_head, self._head_bytes = True, 0

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self._deadline_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self._receiving):
            return  # a response is under way: not the client's delay
        if self._receiving:
            late = f"the request did not arrive within {self._deadline_seconds:g}s"
            self._refuse(408, "request_timeout", late)
        else:
            self.transport.close()  # idle: nothing to answer

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the OpenAI envelope and close (the rest of the request is not read)."""
        body = envelope(message, "invalid_request_error", code)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %b\r\n" % (status, reason),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._disarm()
