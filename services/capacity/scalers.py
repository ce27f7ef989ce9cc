"""Scalers: how the capacity planner brings a model to N replicas, and sees which are ready.

    simulated   state and delays only (the seed's behaviour): replicas "become ready" after
                `startup_seconds` and have no endpoint, so routing does not change
    process     one local process per replica, from a command with `{port}` substituted; ready
                when its health URL answers 200; stopped with SIGTERM, then SIGKILL after a grace
    kubernetes  sets a Deployment's replicas through the API server; ready from
                `status.readyReplicas` (services/capacity/kubernetes.py)

`scale_to` only begins the change and returns; `status` is polled every planner tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import aiohttp
from loguru import logger

from services.capacity.state import Replica
from services.config import ROOT, ScalerSettings
from services.platform.redis_connection import free_port
from services.platform.supervisor import die_with_parent, with_package_path


@dataclass(frozen=True, slots=True)
class ScalerStatus:
    replicas: list[Replica]  # the endpoints to route to (one Service for kubernetes)
    wanted: int
    ready_count: int
    problem: str | None = None  # why the scaler cannot reach `wanted` (it gave up)

    @property
    def ready(self) -> bool:
        """Every wanted replica answers (and at least one is wanted)."""
        return self.wanted > 0 and self.ready_count >= self.wanted


class Scaler(Protocol):
    async def scale_to(self, replicas: int) -> None: ...

    async def status(self) -> ScalerStatus: ...

    async def close(self) -> None: ...


class SimulatedScaler:
    """No processes, no endpoints: replicas are ready `startup_seconds` after they were asked
    for. Routing keeps using the static deployments; the target for new sessions still moves."""

    def __init__(
        self, model: str, settings: ScalerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._model = model
        self._settings = settings
        self._clock = clock
        self._started: list[float] = []

    async def scale_to(self, replicas: int) -> None:
        now = self._clock()
        while len(self._started) < replicas:
            self._started.append(now)
        del self._started[replicas:]

    async def status(self) -> ScalerStatus:
        now = self._clock()
        replicas = [
            Replica(f"{self._model}:sim-{i}", "", now - at >= self._settings.startup_seconds)
            for i, at in enumerate(self._started)
        ]
        return ScalerStatus(replicas, len(self._started), sum(r.ready for r in replicas))

    async def close(self) -> None:
        self._started.clear()


@dataclass
class _Process:
    port: int
    process: asyncio.subprocess.Process
    started: float
    log: IO[bytes]  # the replica's output file, closed when it stops
    ready: bool = False


class ProcessScaler:
    """Local replicas: one process per replica on a free port (vLLM, llama.cpp, or by default
    the built-in simulated model server with `startup_seconds` of cold start)."""

    def __init__(
        self,
        model: str,
        settings: ScalerSettings,
        http: aiohttp.ClientSession,
        *,
        log_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._settings = settings
        self._http = http
        self._log_dir = log_dir
        self._clock = clock
        self._procs: list[_Process] = []
        self._target = 0  # what the planner asked for: dead replicas are replaced up to it
        self._failures = 0  # replicas in a row that died or were never ready
        self._next_start = 0.0  # no replacement before this (backoff)
        self.problem: str | None = None  # set when it gave up replacing

    def argv(self, port: int) -> list[str]:
        """The replica's command line, placeholders substituted."""
        command = self._settings.command or [
            "{python}", "-m", "services.cli", "simulate", "--port", "{port}", "--model-name",
            "{model}", "--cold-start-seconds", str(self._settings.startup_seconds),
        ]  # fmt: skip
        # `{main}`: a checkout's main.py (kept for existing configs; an installed package has
        # none, where `{python} -m services.cli` is the same command).
        values = {"port": port, "model": self._model, "python": sys.executable,
                  "main": str(ROOT / "main.py")}  # fmt: skip
        return [part.format(**values) for part in command]

    def base_url(self, port: int) -> str:
        return self._settings.base_url.format(port=port, model=self._model)

    async def scale_to(self, replicas: int) -> None:
        self._target = replicas
        if replicas == 0:
            self._failures, self.problem = 0, None  # a stop forgives: the next start is fresh
        while len(self._procs) < replicas:
            await self._start_one()
        while len(self._procs) > replicas:
            await self._stop(self._procs.pop())  # newest first

    async def _start_one(self) -> None:
        """Start one replica on a free port; its output goes to its own log file."""
        port = free_port()
        argv = self.argv(port)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = (self._log_dir / f"replica-{self._model}-{port}.log").open("ab")
        # Its own session (a Ctrl-C aimed at the planner does not skip the drain) and tied
        # to our lifetime, like the children of `main.py all`; its output in its own file.
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent, env=with_package_path(os.environ),
        )  # fmt: skip
        self._procs.append(_Process(port, process, self._clock(), log))
        logger.info("started {} replica on port {} (pid {}): {}", self._model, port,
                    process.pid, " ".join(argv))  # fmt: skip

    async def status(self) -> ScalerStatus:
        """The replicas as they are now; dead or never-ready ones are dropped and replaced (with
        backoff) up to what the planner asked for."""
        replicas = []
        for proc in list(self._procs):
            failure = await self._check(proc)
            if failure is not None:
                self._procs.remove(proc)
                self._failed(failure)
                continue
            replicas.append(Replica(f"{self._model}:port-{proc.port}", self.base_url(proc.port),
                                    proc.ready))  # fmt: skip
        missing = len(self._procs) < self._target and self.problem is None
        if missing and self._clock() >= self._next_start:
            await self._start_one()
        return ScalerStatus(replicas, self._target, sum(r.ready for r in replicas), self.problem)

    async def _check(self, proc: _Process) -> str | None:
        """Why `proc` must be replaced (it exited, or is not ready in time), or None."""
        code = proc.process.returncode
        if code is not None:
            proc.log.close()
            return f"exited with code {code}"
        if proc.ready:
            return None
        proc.ready = await self._healthy(proc.port)
        if proc.ready:
            self._failures = 0
            logger.info("{} replica on port {} ready after {:.1f}s", self._model, proc.port,
                        self._clock() - proc.started)  # fmt: skip
            return None
        if self._clock() - proc.started > self._settings.ready_timeout_seconds:
            await self._stop(proc)
            return f"not ready after {self._settings.ready_timeout_seconds:.0f}s"
        return None

    def _failed(self, failure: str) -> None:
        """Count a replica lost; wait before the next, or give up after `max_restarts`."""
        self._failures += 1
        if self._failures > self._settings.max_restarts:
            self.problem = (f"gave up after {self._settings.max_restarts} restarts: the last "
                            f"replica {failure}")  # fmt: skip
            logger.error("{} replicas: {}", self._model, self.problem)
            return
        wait = min(self._settings.restart_backoff_seconds * 2 ** (self._failures - 1), 300.0)
        self._next_start = self._clock() + wait
        logger.error("{} replica {}; replacing it in {:.0f}s ({} of {} restarts)", self._model,
                     failure, wait, self._failures, self._settings.max_restarts)  # fmt: skip

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(p) for p in self._procs))
        self._procs.clear()

    async def _healthy(self, port: int) -> bool:
        url = self._settings.health_url.format(port=port, model=self._model)
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop(self, proc: _Process) -> None:
        """SIGTERM (the server finishes what it is serving), SIGKILL after the grace."""
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._settings.stop_grace_seconds):
                await proc.process.wait()
        except TimeoutError:
            logger.warning("{} replica on port {} ignored SIGTERM; killing it", self._model,
                           proc.port)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
            await proc.process.wait()
        proc.log.close()
        logger.info("stopped {} replica on port {}", self._model, proc.port)
