"""How long a ledger flush holds the event loop: the longest gap between two turns of a task
that does nothing but return to the loop, while an inline writer flushes 1,000 records into
SQLite (the records of a second at 1,000 requests/s). A request arriving during that gap waits
for it, so it shows up in the gateway's p99.

    .venv/bin/python bench/flush_stall.py [--flushes 12] [--records 1000] [--root TREE]

`--root` measures another checkout's ledger (a worktree of an older commit) with this
interpreter; run the two alternately. Prints the median of the longest gaps (the first two
flushes are warm-up and left out) and every flush's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def records(n: int, count: int) -> list[Any]:
    from services.ledger.records import UsageRecord

    fields = {"kind": "request", "model": "m", "status": 200, "outcome": "ok", "tokens_in": 10,
              "tokens_out": 5, "cost_nanousd": 1000, "deployment": "m:0"}  # fmt: skip
    return [UsageRecord(request_id=f"r{n}-{i}", **fields) for i in range(count)]  # type: ignore[arg-type]


async def longest_gap(done: asyncio.Event) -> float:
    """Return to the loop until `done`; the longest wait for the next turn, in ms."""
    gap, last = 0.0, time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    return gap * 1000


async def measure(flushes: int, count: int) -> list[float]:
    from services.ledger.db import make_engine, migrate
    from services.ledger.wal import Ledger

    workdir = Path(tempfile.mkdtemp(prefix="fr-flush-stall-"))
    engine = make_engine(f"sqlite+aiosqlite:///{workdir / 'ledger.db'}")
    await migrate(engine, workdir / "lock")
    ledger = Ledger(engine, workdir / "wal")
    ledger.start()
    gaps: list[float] = []
    for n in range(flushes):
        ledger.append(records(n, count))
        done = asyncio.Event()
        ticker = asyncio.create_task(longest_gap(done))
        await asyncio.sleep(0)  # the ticker runs before the flush starts
        await ledger.flush()
        done.set()
        gaps.append(await ticker)
    await ledger.close()
    await engine.dispose()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flushes", type=int, default=12)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree whose ledger runs")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    gaps = asyncio.run(measure(args.flushes, args.records))[2:]
    each = ", ".join(f"{g:.2f}" for g in gaps)
    print(f"{args.root}: longest event loop stall per flush of {args.records} records, ms: "
          f"median {statistics.median(gaps):.2f}; each: {each}")  # fmt: skip


if __name__ == "__main__":
    main()
