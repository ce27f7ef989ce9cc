"""Supervises child processes for `main.py all`: start, restart with backoff, stop cleanly.

Children run in their own session, so a terminal's Ctrl-C reaches only the supervisor, which then
stops them in order. On Linux each child also asks the kernel to SIGTERM it if the supervisor
dies (PR_SET_PDEATHSIG), so even a SIGKILLed supervisor leaves no orphans behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loguru import logger

PR_SET_PDEATHSIG = 1


class Process(Protocol):
    """The part of subprocess.Popen the supervisor uses."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass(frozen=True)
class ChildSpec:
    """A command to keep running."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    # Stopped only after every other child has exited: what the others still use while they
    # shut down (Redis, where the API writes its last counters; the ledger writer, which must
    # ingest the WAL files the API seals on its way out).
    stop_last: bool = False


@dataclass
class _Child:
    spec: ChildSpec
    process: Process | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    restarts: int = 0


def restart_delay(consecutive_failures: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff for a child that keeps crashing: 0.5 s, 1 s, 2 s, ... up to 30 s."""
    return float(min(cap, base * 2 ** max(0, consecutive_failures - 1)))


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(spec: ChildSpec) -> Process:
    """Start a child in its own session, tied to our lifetime."""
    return subprocess.Popen(
        list(spec.argv),
        env=dict(spec.env) if spec.env is not None else None,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


@dataclass
class Supervisor:
    """Keeps a set of children running until told to stop."""

    specs: Sequence[ChildSpec]
    spawn: Callable[[ChildSpec], Process] = spawn
    clock: Callable[[], float] = time.monotonic
    # A child that ran this long before exiting is treated as healthy again: backoff resets.
    stable_after: float = 30.0
    # How long a child may take to stop after SIGTERM before it is killed (the API drains).
    stop_grace_seconds: float = 10.0
    _children: list[_Child] = field(default_factory=list)

    def start(self) -> None:
        """Start every child in order."""
        for spec in self.specs:
            self.add(spec)

    def add(self, spec: ChildSpec) -> None:
        """Start one more child and keep it supervised."""
        child = _Child(spec)
        self._children.append(child)
        self._launch(child)

    def _launch(self, child: _Child) -> None:
        child.process = self.spawn(child.spec)
        child.started_at = self.clock()
        logger.info("started {} (pid {})", child.spec.name, child.process.pid)

    def poll(self) -> None:
        """Notice exited children and restart those whose backoff has elapsed."""
        now = self.clock()
        for child in self._children:
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                child.failures = 1 if ran >= self.stable_after else child.failures + 1
                delay = restart_delay(child.failures)
                child.process, child.restart_at = None, now + delay
                logger.warning(
                    "{} exited with code {} after {:.1f}s; restarting in {:.1f}s",
                    child.spec.name, code, ran, delay,
                )  # fmt: skip
            elif now >= child.restart_at:
                child.restarts += 1
                self._launch(child)

    def restarts(self, name: str) -> int:
        """How often the named child has been restarted."""
        return sum(c.restarts for c in self._children if c.spec.name == name)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM every child (last started first), then SIGKILL whatever outlives the grace;
        the `stop_last` children get the same treatment once the others are gone."""
        newest_first = list(reversed(self._children))
        self._stop_wave([c for c in newest_first if not c.spec.stop_last], grace_seconds)
        self._stop_wave([c for c in newest_first if c.spec.stop_last], grace_seconds)

    def _stop_wave(self, children: list[_Child], grace_seconds: float) -> None:
        running = [c for c in children if c.process is not None]
        for child in running:
            assert child.process is not None
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = self.clock() + grace_seconds
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "{} ignored SIGTERM for {:.0f}s; killing it", child.spec.name, grace_seconds
                )
                child.process.kill()
                child.process.wait()
            logger.info("stopped {}", child.spec.name)
            child.process = None

    def run(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Poll until `stop` is set, then stop every child."""
        try:
            while not stop.wait(poll_interval):
                self.poll()
        finally:
            self.stop(self.stop_grace_seconds)


def with_package_path(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with this `services` package on PYTHONPATH: children started as
    `python -m services.cli ...` import it from a checkout and from an installed package alike."""
    parent = str(Path(__file__).resolve().parent.parent.parent)
    paths = [parent, *filter(None, [environ.get("PYTHONPATH")])]
    return {**environ, "PYTHONPATH": os.pathsep.join(paths)}
