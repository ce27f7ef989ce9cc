"""`main.py demo`: every fault phase is absorbed, and the report says by whom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import MAIN


def test_demo_absorbs_every_injected_fault(tmp_path: Path) -> None:
    """No client error in any phase; failures go to the secondary, a total outage to cache and
    degraded, and traffic returns to the primary once its breaker has recovered."""
    env = {**os.environ, "FR_LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run(
        [sys.executable, MAIN, "demo", "--requests", "8", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    rows = {row["phase"]: row for row in summary["phases"]}
    assert all(row["errors"] == 0 and row["requests"] == 8 for row in rows.values())
    assert rows["healthy"]["primary"] == 8
    for phase in (
        "primary returns HTTP 500",
        "primary drops connections",
        "primary hangs (1 s first token)",
        "primary silent after headers, streamed",
    ):
        assert rows[phase]["secondary"] == 8, phase
    # Broken after their first words: continued (the header still names the primary, which
    # started them) until the primary's breaker opens, then served by the secondary; every
    # streamed answer whole (a cut one would count as an error above).
    for phase in ("primary stalls mid-stream", "primary cuts streams"):
        assert (
            rows[phase]["primary"] >= 1 and rows[phase]["primary"] + rows[phase]["secondary"] == 8
        )
    assert rows["every model down"]["cache"] == 4 and rows["every model down"]["degraded"] == 4
    assert rows["recovered"]["primary"] >= 2  # the half-open probes, at least
    assert summary["statistics"]["tiers"]["failed"] == 0
    # Each fault phase resets the breakers; the summary still counts the trips of every phase.
    assert summary["breakers"]["primary:0"]["trips"] >= 5
    assert (tmp_path / "logs" / "demo.log").exists()
