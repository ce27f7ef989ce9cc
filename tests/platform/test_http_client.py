"""The outbound HTTP client against real sockets: a scripted HTTP/1.1 server on 127.0.0.1 that
answers each request as the test says (keep-alive, close, chunked, gzip, garbage, silence)."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.errors import (
    HTTPBadResponse,
    HTTPConnectFailed,
    HTTPDisconnected,
    HTTPRequestRefused,
    UpstreamHTTPError,
    UpstreamProtocolError,
)
from services.platform.http_client import INFLATE_PIECE, HTTPClient, request_head
from services.platform.redis_connection import free_port
from services.providers.base import post
from services.providers.openai import OpenAIProvider

Answer = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Scripted:
    """A raw HTTP/1.1 server: `answer(n, request, writer)` writes the n-th request's answer and
    says whether to keep the connection open. Counts connections and requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.received = asyncio.Event()
        self.closed_by_client = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                self.received.set()
                if not await self.answer(len(self.requests), request, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    answer: Answer, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted(answer)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield scripted, f"{scheme}://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def client(**options: object) -> AsyncIterator[HTTPClient]:
    http = HTTPClient(**options)  # type: ignore[arg-type]
    try:
        yield http
    finally:
        await http.close()


async def keep_alive(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    return True


async def body_of(http: HTTPClient, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    resp = await http.request("POST", url, headers={"Content-Type": "application/json"}, body=body)
    data = b"".join([block async for block in resp.iter_any()])
    resp.release()
    return resp.status, data


async def test_requests_reuse_one_connection_and_carry_the_body_and_headers() -> None:
    async with serving(keep_alive) as (server, url), client() as http:
        for _ in range(3):
            assert await body_of(http, url, b'{"a":1}') == (200, b"{}")
        assert server.connections == 1 and http.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in head and b"\r\nContent-Length: 7" in head
    assert b"\r\nContent-Type: application/json" in head and body == b'{"a":1}'
    assert b"cookie" not in head.lower() and b"user-agent" not in head.lower()


async def test_connection_close_and_an_unread_body_are_not_reused() -> None:
    rest = asyncio.Event()

    async def close_first(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
            return False
        if n == 3:  # half the body now, the rest later
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}")
            await writer.drain()
            await rest.wait()
            writer.write(b"  ")
            return True
        writer.write(OK)
        return True

    async with serving(close_first) as (server, url), client() as http:
        assert await body_of(http, url) == (200, b"{}")
        assert await body_of(http, url) == (200, b"{}")
        assert server.connections == 2
        resp = await http.request("POST", url, headers={}, body=b"{}")
        resp.release()  # the body is not complete: the connection cannot carry the next answer
        rest.set()
        assert await body_of(http, url) == (200, b"{}")
        assert server.connections == 3


async def test_a_pooled_connection_the_server_dropped_is_retried_once_on_a_new_one() -> None:
    """The keep-alive race: the server closes an idle connection just as it is reused. The
    request never reached the application, so it is sent again on a fresh connection."""

    async def drop_second(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False  # close without a byte of answer
        writer.write(OK)
        return True

    async with serving(drop_second) as (server, url), client() as http:
        assert await body_of(http, url) == (200, b"{}")
        assert await body_of(http, url) == (200, b"{}")
        assert server.connections == 2 and len(server.requests) == 3


async def test_a_connection_cut_after_an_answer_started_is_an_error_not_a_retry() -> None:
    async def cut(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        return False

    async with serving(cut) as (server, url), client() as http:
        resp = await http.request("POST", url, headers={}, body=b"{}")
        with pytest.raises(HTTPDisconnected):
            async for _ in resp.iter_any():
                pass
        resp.release()
        assert len(server.requests) == 1 and http.connections == 0


async def test_chunked_bodies_arrive_as_they_are_sent_and_close_delimited_ones_end_at_close() -> (
    None
):
    more = asyncio.Event()

    async def chunked(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await more.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        return False

    async with serving(chunked) as (server, url), client() as http:
        resp = await http.request("POST", url, headers={}, body=b"{}")
        blocks = resp.iter_any()
        assert await anext(blocks) == b"first"  # before the server sent the rest
        more.set()
        assert b"".join([b async for b in blocks]) == b"second"
        resp.release()
        resp = await http.request("POST", url, headers={}, body=b"{}")
        assert resp.content_type == "text/plain"
        assert b"".join([b async for b in resp.iter_any()]) == b"until the end"
        resp.release()
        assert server.connections == 1


async def test_gzip_inflates_in_bounded_pieces_so_a_bomb_can_be_stopped() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)  # 20 MB of zeros in about 20 kB

    async def compressed(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        body = gzip.compress(b'{"ok":true}') if n == 1 else bomb
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        return True

    async with serving(compressed) as (_, url), client() as http:
        assert await body_of(http, url) == (200, b'{"ok":true}')
        resp = await http.request("POST", url, headers={}, body=b"{}")
        seen = 0
        async for piece in resp.iter_any():
            assert len(piece) <= INFLATE_PIECE
            seen += len(piece)
            if seen > 1_000_000:  # what an adapter's size limit does
                break
        resp.close()
        assert 1_000_000 < seen < 1_000_000 + 2 * INFLATE_PIECE


@pytest.mark.parametrize(
    "answer",
    [
        b"SPDY/3 200 whatever\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["not-http", "bad-length", "huge-headers", "unknown-encoding"],
)
async def test_answers_that_are_not_readable_http_are_bad_responses(answer: bytes) -> None:
    async def garbage(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return True

    async def read_all(http: HTTPClient, url: str) -> None:
        resp = await http.request("POST", url, headers={}, body=b"{}")
        try:
            async for _ in resp.iter_any():
                pass
        finally:
            resp.close()

    async with serving(garbage) as (_, url), client() as http:
        with pytest.raises(HTTPBadResponse):
            await read_all(http, url)


async def test_interim_answers_are_skipped_and_head_answers_have_no_body() -> None:
    async def interim(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        else:  # HEAD: a length, and no body after it
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        return True

    async with serving(interim) as (_, url), client() as http:
        assert await body_of(http, url) == (200, b"{}")
        resp = await http.request("HEAD", url, headers={})
        assert resp.status == 200 and resp.headers["content-length"] == "1234"
        assert [b async for b in resp.iter_any()] == []
        resp.release()


async def test_a_full_pool_makes_the_next_request_wait_for_a_slot() -> None:
    async with serving(keep_alive) as (server, url), client(max_connections=1) as http:
        first = await http.request("POST", url, headers={}, body=b"{}")
        second = asyncio.create_task(body_of(http, url))
        for _ in range(20):
            await asyncio.sleep(0)  # let the task run as far as it can
        assert not second.done() and len(server.requests) == 1
        first.release()
        assert await second == (200, b"{}")
        assert server.connections == 1


async def test_a_request_cancelled_while_the_server_hangs_frees_its_slot_and_socket() -> None:
    async def hang(n: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            await asyncio.Event().wait()  # never answers; cancelled when the server closes
        writer.write(OK)
        return True

    async with serving(hang) as (server, url), client(max_connections=1) as http:
        task = asyncio.create_task(http.request("POST", url, headers={}, body=b"{}"))
        await server.received.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.connections == 0
        assert await body_of(http, url) == (200, b"{}")  # the one slot is free again
        assert server.connections == 2


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte() -> None:
    size = 4_000_000

    async def big(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"y" * size)
        return True

    async with serving(big) as (_, url), client(max_buffered_bytes=65_536) as http:
        resp = await http.request("POST", url, headers={}, body=b"{}")
        conn = resp._conn
        assert conn is not None
        for _ in range(500):
            if conn._reading_paused:
                break
            await asyncio.sleep(0.01)  # waits for the socket to fill, not for time to pass
        assert conn._reading_paused
        assert resp._buffered < 65_536 + 1_048_576  # at most one read beyond the mark
        assert sum([len(b) async for b in resp.iter_any()]) == size
        resp.release()


async def test_connect_failures_and_forbidden_requests_are_client_errors() -> None:
    async with client() as http:
        with pytest.raises(HTTPConnectFailed):
            await http.request("POST", f"http://127.0.0.1:{free_port()}/v1", headers={})
        with pytest.raises(HTTPRequestRefused):
            await http.request("POST", "ftp://127.0.0.1/v1", headers={})
    with pytest.raises(HTTPRequestRefused):
        request_head("POST", "/v1", "h", {"Authorization": "Bearer x\r\nX-Evil: 1"}, 2)
    with pytest.raises(HTTPRequestRefused):
        request_head("POST", "/v1", "h", {"Authorization": "Bearer ключ"}, 2)


async def test_a_redirect_is_reported_with_its_location_and_not_followed() -> None:
    async def redirect(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: http://elsewhere.example/v1"
                     b"/chat/completions?key=sk-abcdefghijklmnop\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        return True

    async with serving(redirect) as (server, url), client() as http:
        with pytest.raises(UpstreamHTTPError) as caught:
            await post(http, "dep", url, b"{}", {}, 1.0)
        assert caught.value.status == 308 and len(server.requests) == 1
        assert "redirected to http://elsewhere.example/v1/chat/completions" in str(caught.value)
        assert "not followed" in str(caught.value) and "sk-abcdefghijklmnop" not in str(
            caught.value
        )


async def test_an_answer_that_is_not_http_is_a_protocol_error_for_the_adapters() -> None:
    async def garbage(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        return True

    async with serving(garbage) as (_, url), client() as http:
        with pytest.raises(UpstreamProtocolError, match="malformed HTTP"):
            await post(http, "dep", url, b"{}", {}, 1.0)
        assert http.connections == 0


async def test_health_probes_reuse_their_connection() -> None:
    """A probe reads the short answer to its end, so the next probe (TLS to a real provider)
    does not open a new connection every interval."""
    async with serving(keep_alive) as (server, url), client() as http:
        provider = OpenAIProvider("dep", base_url=url.rsplit("/chat/completions", 1)[0],
                                  upstream_model="m", api_key=None, session=http,
                                  connect_timeout=1.0)  # fmt: skip
        for _ in range(3):
            await provider.probe()
        assert len(server.requests) == 3 and server.connections == 1
        assert server.requests[0].startswith(b"GET /v1/models HTTP/1.1")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_checks_the_certificate_and_speaks_through_a_trusted_one(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with serving(keep_alive, server_tls) as (server, url):
        async with client() as http:  # the system's trust store: a self-signed cert fails
            with pytest.raises(HTTPConnectFailed, match=r"SSL|certificate"):
                await http.request("POST", url, headers={}, body=b"{}")
        trusting = ssl.create_default_context(cafile=str(cert))
        async with client(ssl_context=trusting) as http:
            assert await body_of(http, url) == (200, b"{}")
            assert await body_of(http, url) == (200, b"{}")
        # the failed handshake never reached the server's handler; both requests shared one
        assert server.connections == 1 and len(server.requests) == 2
