"""How long the operator console takes to show its data, in Debian's Chromium on loopback.

    .venv/bin/python bench/console_load.py [--loads 10]

Starts `main.py all` on the shipped config (free ports, its own data directory), sends a few
chat turns so that the ledger has rows, then opens /ui in a fresh page `--loads` times and reads
when the page had rendered its first data (the page records `performance.now()`, milliseconds
since the navigation began, on its first complete refresh: HTML, CSS, the scripts, uPlot, the
console read, costs and trends, and both charts drawn). Prints the median and the slowest.
Needs chromium (scripts/check installs it) and Playwright (a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.helpers import http, start_main_all  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    workdir = Path(tempfile.mkdtemp(prefix="fr-console-"))
    proc, base = start_main_all(workdir, os.environ.get("PATH", ""))
    try:
        turn = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(5):
            assert http("POST", base + "/v1/chat/completions", turn)[0] == 200
        times = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
            for _ in range(args.loads):
                page = browser.new_page()
                page.goto(base + "/ui")
                page.wait_for_selector("body[data-loaded]")
                times.append(float(page.evaluate("() => document.body.dataset.loaded")))
                page.close()
            browser.close()
        print(json.dumps({"loads": len(times), "median_ms": round(statistics.median(times), 1),
                          "max_ms": round(max(times), 1)}))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
