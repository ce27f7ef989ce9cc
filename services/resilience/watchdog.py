"""The deadlines of one upstream attempt, kept by one timer instead of one per chunk.

An attempt waits for the upstream in phases: for its first content token (connect and headers
included), then for each next chunk. `asyncio.timeout` around every wait would be exact, but it
costs a Timeout object and a timer handle per chunk (measured: 40 µs for a six-chunk stream
against 2 µs without; bench/RESULTS.md). The watchdog keeps one timer armed for the earliest
moment a deadline could pass; when it fires it looks at the current wait: still waiting past
its limit, the waiting task is cancelled and the wait ends in `UpstreamTimeout`; otherwise it
re-arms for the current wait's own limit. A chunk costs a clock read and two attribute writes.

Cancellation follows `asyncio.timeout`'s rules: the watchdog's own cancel is told apart from
anyone else's with `Task.uncancel`, so a client that goes away still cancels the request.
"""

from __future__ import annotations

import asyncio
import math


class Watchdog:
    """Deadlines for the waits of one attempt (see the module docstring)."""

    __slots__ = ("_armed_at", "_deadline", "_due", "_handle", "_loop", "_task", "_time",
                 "_waiting", "fired")  # fmt: skip

    def __init__(self, deadline: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        # A hard end for every wait (the walk's deadline for a whole answer), in loop time.
        self._deadline = deadline
        self._due = 0.0
        self._waiting = False
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self.fired = False

    def bind(self) -> None:
        """The waits from now on are the current task's (the one to cancel when one overruns)."""
        self._task = asyncio.current_task()

    def begin(self, limit: float) -> None:
        """A wait starts that may last `limit` seconds (and not past the hard deadline)."""
        due = self._time() + limit
        if self._deadline is not None and self._deadline < due:
            due = self._deadline
        self._due = due
        self._waiting = True
        if due < self._armed_at:  # no timer yet, or one set for a longer limit
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(due, self._check)
            self._armed_at = due

    def end(self) -> None:
        """The wait is over."""
        self._waiting = False

    def expired(self) -> bool:
        """Whether the cancellation being handled is this watchdog's: its task is not being
        cancelled by anyone else too. Call it once, from the cancelled task."""
        task = self._task
        return self.fired and task is not None and task.uncancel() == 0

    def reason(self, stall: float) -> str:
        """Why the last wait was cut short."""
        if self._deadline is not None and self._time() >= self._deadline:
            return "the attempt ran out of time"
        return f"the stream stalled for {stall:g}s"

    def close(self) -> None:
        """No more waits: drop the timer."""
        self._waiting = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_at = math.inf

    def _check(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        if not self._waiting or self.fired:
            return  # between waits: the next wait arms the timer again
        if self._time() >= self._due:
            self.fired = True
            if self._task is not None:
                self._task.cancel()
        else:
            self._handle = self._loop.call_at(self._due, self._check)
            self._armed_at = self._due
