"""The scale-out harness: several `main.py api` replicas on one shared Redis and one PostgreSQL
ledger, and a round-robin client standing in for the load balancer in front of them.

The client does what a load balancer does: a replica that refuses the connection (it is down)
is skipped and the request goes to the next one, so it is not a failure the client sees; a
request that was in flight on a replica that died is one (counted apart, by replica).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

from services.platform.redis_connection import free_port
from tests.helpers import api_process, healthy, http, wait_until


@dataclass
class Replica:
    """One `main.py api` process; its WAL directory outlives it (a restart replays it)."""

    name: str
    config: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = api_process(self.config, self.env, self.port)

    def wait_ready(self) -> None:
        wait_until(lambda: healthy(self.base + "/readyz"), timeout=60, what=f"replica {self.name}")

    def kill(self) -> None:
        """SIGKILL: no drain, no ledger flush, what an OOM kill or a lost node does."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait (a graceful stop flushes the ledger); the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def get(self, path: str) -> dict[str, Any]:
        status, _, body = http("GET", self.base + path, timeout=5)
        assert status == 200, body
        return dict(json.loads(body))


def start_replicas(count: int, config: Path, env: dict[str, str], workdir: Path) -> list[Replica]:
    """`count` replicas, each with its own WAL directory (as pods with their own volume)."""
    replicas = []
    for n in range(count):
        wal = workdir / f"replica-{n}" / "wal"
        wal.mkdir(parents=True)
        replica = Replica(f"api-{n}", config, {**env, "FR_LEDGER_WAL_DIR": str(wal)})
        replica.start()
        replicas.append(replica)
    for replica in replicas:
        replica.wait_ready()
    return replicas


@dataclass
class Outcome:
    replica: str
    status: int | None  # None: no answer (the replica died mid-request)
    request_id: str | None
    model: str | None
    session: str


class RoundRobinLoad:
    """`threads` client threads sending chat turns to the replicas in turn, until stopped."""

    def __init__(self, replicas: list[Replica], sessions: list[str], threads: int = 6) -> None:
        self.replicas = replicas
        self.sessions = sessions
        self.outcomes: list[Outcome] = []
        self.refused = 0  # connections a dead replica refused: retried on the next one
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> RoundRobinLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def answered(self) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.status == 200)

    def wait_for(self, more: int, timeout: float = 60) -> None:
        """Until `more` further requests have been answered (progress, not time)."""
        target = self.answered() + more
        wait_until(lambda: self.answered() >= target, timeout=timeout,
                   what=f"{more} more answered requests")  # fmt: skip

    def _run(self) -> None:
        while not self._stop.is_set():
            n = next(self._next)
            session = self.sessions[n % len(self.sessions)]
            for offset in range(len(self.replicas)):  # the load balancer's retry on refusal
                replica = self.replicas[(n + offset) % len(self.replicas)]
                outcome = self._send(replica, session)
                if outcome is not None:
                    with self._lock:
                        self.outcomes.append(outcome)
                    break
                with self._lock:
                    self.refused += 1

    @staticmethod
    def _send(replica: Replica, session: str) -> Outcome | None:
        """One turn; None when the replica refused the connection (it is down)."""
        conn = HTTPConnection("127.0.0.1", replica.port, timeout=30)
        body = json.dumps({"session_id": session, "message": "hello"})
        try:
            conn.connect()
        except OSError:
            return None
        try:
            conn.request("POST", "/chat_completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return Outcome(replica.name, response.status, response.getheader("x-request-id"),
                           response.getheader("x-router-model"), session)  # fmt: skip
        except (OSError, HTTPException):
            return Outcome(replica.name, None, None, None, session)
        finally:
            conn.close()

    def summary(self) -> Counter[tuple[str, int | None]]:
        with self._lock:
            return Counter((o.replica, o.status) for o in self.outcomes)

    def where(self, predicate: Callable[[Outcome], bool]) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if predicate(o)]
