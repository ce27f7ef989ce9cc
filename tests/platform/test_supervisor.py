"""The supervisor restarts crashed children with growing backoff and stops them all (fake clock)."""

from __future__ import annotations

import signal
import subprocess
from typing import ClassVar

import pytest

from services.platform.supervisor import ChildSpec, Supervisor, restart_delay
from tests.helpers import FakeClock


class FakeProcess:
    """A process whose exit the test decides."""

    next_pid = 100
    journal: ClassVar[list[tuple[int, int]]] = []  # (pid, signal) of every signal sent, in order

    def __init__(self) -> None:
        FakeProcess.next_pid += 1
        self.pid = FakeProcess.next_pid
        self.code: int | None = None
        self.signals: list[int] = []
        self.ignores_term = False

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        FakeProcess.journal.append((self.pid, sig))
        if not self.ignores_term:
            self.code = -sig

    def wait(self, timeout: float | None = None) -> int:
        if self.code is None:
            raise subprocess.TimeoutExpired("fake", timeout or 0)
        return self.code

    def kill(self) -> None:
        self.code = -9


def recording(spawned: list[FakeProcess]) -> object:
    """A spawn function that starts a FakeProcess and remembers it."""

    def spawn(_spec: ChildSpec) -> FakeProcess:
        spawned.append(FakeProcess())
        return spawned[-1]

    return spawn


def test_restart_delay_doubles_up_to_a_cap() -> None:
    """Backoff is 0.5 s, 1 s, 2 s ... and never more than 30 s."""
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


def test_crashed_child_restarts_after_backoff() -> None:
    """A crash-looping child is restarted only when its growing backoff has elapsed."""
    clock, spawned = FakeClock(), []

    def spawn(spec: ChildSpec) -> FakeProcess:
        spawned.append(FakeProcess())
        return spawned[-1]

    sup = Supervisor([ChildSpec("api", ["x"])], spawn=spawn, clock=clock)
    sup.start()
    for expected_delay in (0.5, 1.0, 2.0):
        spawned[-1].code = 1
        sup.poll()  # notices the exit
        clock.now += expected_delay - 0.01
        sup.poll()
        before = len(spawned)
        clock.now += 0.02
        sup.poll()
        assert len(spawned) == before + 1, f"restart expected after {expected_delay}s"
    assert sup.restarts("api") == 3


def test_a_long_healthy_run_resets_the_backoff() -> None:
    """A child that ran longer than `stable_after` before exiting restarts after the first delay."""
    clock, spawned = FakeClock(), []
    sup = Supervisor(
        [ChildSpec("api", ["x"])],
        spawn=recording(spawned),
        clock=clock,
    )
    sup.start()
    for _ in range(3):  # build up failures
        spawned[-1].code = 1
        sup.poll()
        clock.now += 10
        sup.poll()
    clock.now += 100  # runs healthily for a while
    spawned[-1].code = 1
    sup.poll()
    clock.now += 0.51
    sup.poll()
    assert len(spawned) == 5


def test_stop_terms_in_reverse_order_and_kills_the_stubborn() -> None:
    """Stop sends SIGTERM to every child, newest first, and SIGKILLs one that ignores it."""
    clock, spawned = FakeClock(), []
    sup = Supervisor(
        [ChildSpec("redis", ["r"]), ChildSpec("api", ["a"])],
        spawn=recording(spawned), clock=clock,
    )  # fmt: skip
    sup.start()
    spawned[1].ignores_term = True
    sup.stop(grace_seconds=0)
    assert spawned[0].signals == [signal.SIGTERM] and spawned[0].code == -signal.SIGTERM
    assert spawned[1].signals == [signal.SIGTERM] and spawned[1].code == -9


def test_stop_last_children_are_stopped_after_the_others_exit() -> None:
    """Redis and the ledger writer outlive the API's shutdown: they get SIGTERM only once the
    API has exited (the API writes to Redis and seals WAL files on its way out)."""
    clock, spawned = FakeClock(), []
    sup = Supervisor(
        [ChildSpec("redis", ["r"], stop_last=True), ChildSpec("api", ["a"]),
         ChildSpec("ledger-writer", ["w"], stop_last=True)],
        spawn=recording(spawned), clock=clock,
    )  # fmt: skip
    sup.start()
    redis, api, writer = spawned
    FakeProcess.journal.clear()
    sup.stop(grace_seconds=0)
    # Without stop_last the order would be newest first: writer, api, redis.
    assert FakeProcess.journal == [
        (api.pid, signal.SIGTERM), (writer.pid, signal.SIGTERM), (redis.pid, signal.SIGTERM)
    ]  # fmt: skip


@pytest.mark.parametrize("code", [0, 1, -11])
def test_any_exit_is_restarted(code: int) -> None:
    """Clean exits are restarted too: a supervised child is meant to run until told to stop."""
    clock, spawned = FakeClock(), []
    sup = Supervisor(
        [ChildSpec("x", ["x"])],
        spawn=recording(spawned),
        clock=clock,
    )
    sup.start()
    spawned[0].code = code
    sup.poll()
    clock.now += 1
    sup.poll()
    assert len(spawned) == 2
