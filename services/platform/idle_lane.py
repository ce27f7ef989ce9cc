"""A thread that runs its own event loop at the lowest CPU priority (Linux `SCHED_IDLE`).

For deferred work sharing a machine with processes that serve requests: the external ledger
writer's once-a-second insert, at normal priority, took a core often enough to raise the API's
p99 at concurrency 1 from about 0.5 to 1.8 ms (bench/RESULTS.md); at `SCHED_IDLE` the kernel
gives any other runnable thread the core at once, and the p99 went back to 0.56 ms.

`SCHED_IDLE` is per thread and inherited by the threads it starts (aiosqlite's among them), so
the process's main thread keeps normal priority. That matters because an unprivileged process
cannot leave `SCHED_IDLE` again: work that must not starve (catching up on a backlog when the
machine is saturated) runs on the main thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable

from loguru import logger


def idle_priority_available() -> bool:
    """Whether this platform has `SCHED_IDLE` (Linux)."""
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


class IdleLane:
    """Runs `main(stop)` on a thread of its own, in its own event loop, at `SCHED_IDLE`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.idle = False  # the thread runs at SCHED_IDLE (False: the kernel refused)
        self.error: BaseException | None = None

    def start(self, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        self._thread = threading.Thread(target=self._run, args=(main,), name=self._name,
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout: float) -> bool:
        """Ask `main` to stop and wait for it; False if it has not ended within `timeout`."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            # The loop may close between the check and the call: then it has ended anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
            self.idle = True
        except (AttributeError, OSError) as exc:
            logger.warning("{}: idle CPU priority refused ({}); running at normal priority",
                           self._name, exc)  # fmt: skip
        try:
            loop = asyncio.new_event_loop()
            self._loop, self._stop = loop, asyncio.Event()
        finally:
            self._ready.set()  # start() returns even if the loop could not be made
        try:
            loop.run_until_complete(main(self._stop))
        except BaseException as exc:  # noqa: BLE001 - reported to the owner, which decides
            self.error = exc
            logger.opt(exception=exc).error("{} stopped on an error", self._name)
        finally:
            loop.close()
