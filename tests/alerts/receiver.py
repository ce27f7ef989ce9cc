"""A real webhook receiver for the tests: an HTTP server on loopback that records every delivery
and answers with the statuses it is told, optionally holding each answer until released."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.platform.redis_connection import free_port


class Receiver:
    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])  # answered in order; 200 once they run out
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.released = threading.Event()
        self.released.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()},
                                                body))  # fmt: skip
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.released.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook/secret-token-in-path"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.deliveries]

    def of(self, event: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [
                (h, json.loads(b)) for h, b in self.deliveries if json.loads(b)["event"] == event
            ]
