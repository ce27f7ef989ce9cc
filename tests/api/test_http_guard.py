"""`main.py api` against clients that never finish: a request head over the limit is refused
before the rest is read, and a request that arrives too slowly (or never) is cut off."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.platform.redis_connection import free_port
from tests.helpers import SimProcess, api_process, healthy, http, single_model_config, wait_until


@pytest.fixture
def api(tmp_path: Path, redis_url: str, primary: SimProcess) -> Iterator[int]:
    """`main.py api` with a 1 s client timeout and the default 16 KiB header limit."""
    config = single_model_config(tmp_path, redis_url, primary)
    port = free_port()
    proc = api_process(config, {"FR_API_CLIENT_TIMEOUT_SECONDS": "1"}, port)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}/livez"), timeout=60, what="api")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def answer_to(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data` (never completing the request) and read what the server answers."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may close while we still write: its answer is what counts.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def test_a_huge_header_is_refused_before_it_ends(api: int) -> None:
    """100 kB of one header, never finished: 431 in the envelope, without waiting for the end
    (which never comes)."""
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 100_000
    answer, _ = answer_to(api, head)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in answer


def test_a_huge_url_is_refused_before_it_ends(api: int) -> None:
    answer, _ = answer_to(api, b"GET /" + b"a" * 100_000)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_slow_and_idle_clients_are_cut_off(api: int) -> None:
    """A request head left unfinished gets 408 after the 1 s client timeout; a connection that
    says nothing is closed; the server still answers everyone else."""
    answer, elapsed = answer_to(api, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in answer
    assert elapsed < 5
    body, elapsed = answer_to(api, b"")
    assert body == b"" and elapsed < 5, "an idle connection is closed"
    partial_body = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                    b"Content-Type: application/json\r\n\r\n{\"model\"")  # fmt: skip
    answer, elapsed = answer_to(api, partial_body)
    assert answer.startswith(b"HTTP/1.1 408 ") and elapsed < 5, "a body that stops coming too"
    assert http("GET", f"http://127.0.0.1:{api}/livez")[0] == 200
