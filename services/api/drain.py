"""Graceful shutdown on SIGTERM (SPEC §11): readiness first, then the listener, then the work.

uvicorn closes its listening socket the moment it sees SIGTERM. Behind a load balancer or a
Kubernetes Service that is too early: the pod is still listed as an endpoint for a few seconds
and new connections would be refused. So each API process, once its app has started, puts this
handler in front of uvicorn's:

    SIGTERM -> /readyz answers 503 at once (the balancer stops sending)
            -> `drain_delay_seconds` later, uvicorn's own handler: stop accepting, let in-flight
               requests and streams finish within `shutdown_grace_seconds`
            -> the app's shutdown: the ledger flushes, pending counters reach Redis -> exit 0

A second SIGTERM during the delay does not shorten it; SIGINT (Ctrl-C) keeps uvicorn's
immediate behaviour.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from loguru import logger


def install(delay_seconds: float, on_drain: Callable[[], None]) -> bool:
    """Wrap the current SIGTERM handler (uvicorn's); False when it cannot be done here (not the
    main thread, or no running loop: e.g. an app served by a test thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    previous: Any = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False
    draining = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal draining
        if draining:
            return
        draining = True
        on_drain()
        logger.info("SIGTERM: not ready any more; closing the listener in {:.1f}s", delay_seconds)
        loop.call_soon_threadsafe(loop.call_later, delay_seconds, previous, signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return True
