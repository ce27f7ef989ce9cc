"""The console page in a real headless Chromium (Debian's, driven by Playwright), against a real
gateway with keys, real simulated upstreams, real Redis and a real ledger: the admin logs in, sees
the deployments and their breakers, sees a breaker that real failures open, resets it with a
click, switches a deployment off and on, and the cost chart is drawn from the ledger's rows. A
screenshot is left in .logs/ for a human to look at; the browser's console stays free of errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.app import create_app
from tests.helpers import (
    ROOT,
    GatewayServer,
    SimProcess,
    http,
    openai_model,
    settings_for,
    wait_until,
)

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/check installs it)")
sync_api = pytest.importorskip("playwright.sync_api")

CLIENT_KEY = "fr-client-console-5b1e"
ADMIN_KEY = "fr-admin-console-9c3f"
ENVIRON = {"FR_API_KEYS": CLIENT_KEY, "FR_ADMIN_KEY": ADMIN_KEY}
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-component-update", "--disable-sync"]  # fmt: skip
PRICING = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}


@pytest.fixture
def console_gateway(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> Iterator[GatewayServer]:
    """Two priced models in a chain, keys on, the ledger flushing every 0.2 s."""
    models = {
        "primary": {**openai_model(primary.openai_url, "primary-upstream"), "pricing": PRICING},
        "secondary": {
            **openai_model(secondary.openai_url, "secondary-upstream"),
            "pricing": PRICING,
        },
    }
    settings = settings_for(redis_url, tmp_path / "logs", models,
                            {"default": ["primary", "secondary", "degraded"]},
                            resilience={"health": {"enabled": False}})  # fmt: skip
    with GatewayServer(create_app(settings, environ=ENVIRON)) as server:
        yield server


def chat(base: str, model: str = "default") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hello console"}]}
    return http("POST", base + "/v1/chat/completions", body,
                {"Authorization": f"Bearer {CLIENT_KEY}"})[0]  # fmt: skip


def admin_get(base: str, path: str) -> Any:
    status, _, raw = http("GET", base + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200, raw
    return json.loads(raw)


@pytest.mark.slow
def test_the_console_shows_and_drives_the_running_gateway(
    console_gateway: GatewayServer, primary: SimProcess
) -> None:
    base = console_gateway.base
    for _ in range(4):
        assert chat(base) == 200
    wait_until(lambda: admin_get(base, "/api/llm/costs?days=1")["total_requests"] == 4,
               what="the turns in the ledger")  # fmt: skip
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(base + "/ui")

            # Keys are configured: the page asks for the admin key, and shows nothing before.
            page.wait_for_selector("#login:not([hidden])")
            assert page.locator("#console").is_hidden()
            page.fill("#key", ADMIN_KEY)
            page.click("#login-form button")
            row = 'tr[data-deployment="{}"]'
            page.wait_for_selector(row.format("primary:0") + " .breaker .badge.closed")
            assert page.locator(row.format("secondary:0")).count() == 1
            page.select_option("#interval", "2000")

            # The cost chart is drawn from the ledger's rows: the same days and dollars.
            trends = admin_get(base, "/api/llm/trends?days=30")["daily"]
            page.wait_for_function("() => window.frConsole.charts['cost-chart'] !== undefined")
            drawn = page.evaluate("() => window.frConsole.charts['cost-chart'].chart.data")
            assert len(drawn[0]) == 30, "the whole window, one point a day"
            assert drawn[1][-1] == trends[-1]["cost_usd"] > 0, "today's cost, from the ledger"
            assert sum(drawn[1]) == pytest.approx(sum(day["cost_usd"] for day in trends))
            figure = page.locator("#cost-figures").inner_text()
            assert f"${admin_get(base, '/api/llm/costs?days=30')['total_cost_usd']:.4f}" in figure

            # Real failures open the primary's breaker; the page shows it within its refresh.
            primary.behave(failure_rate=1.0)
            for _ in range(3):
                assert chat(base, "primary") in (502, 503)
            assert (
                admin_get(base, "/circuit-breakers")["circuit_breakers"]["primary:0"]["state"]
                == "open"
            )
            page.wait_for_selector(row.format("primary:0") + " .breaker .badge.open", timeout=5000)
            assert "default" in page.locator("#chains").inner_text()

            # A click resets it, for every process (through Redis).
            primary.reset()
            page.click(row.format("primary:0") + ' button[data-action="reset"]')
            page.wait_for_selector(
                row.format("primary:0") + " .breaker .badge.closed", timeout=5000
            )
            assert (
                admin_get(base, "/circuit-breakers")["circuit_breakers"]["primary:0"]["state"]
                == "closed"
            )

            # Switch the secondary off and on again.
            page.click(row.format("secondary:0") + ' button[data-action="toggle"]')
            page.wait_for_selector(row.format("secondary:0") + " .badge.disabled", timeout=5000)
            assert (
                "secondary:0"
                in admin_get(base, "/api/admin/fallback/queue")["models"]["secondary"][0]["name"]
            )
            assert not admin_get(base, "/api/admin/fallback/queue")["models"]["secondary"][0][
                "enabled"
            ]
            page.click(row.format("secondary:0") + ' button[data-action="toggle"]')
            page.wait_for_selector(row.format("secondary:0") + " .badge.healthy", timeout=5000)

            # The failovers just made are listed.
            page.wait_for_selector("#incidents tbody tr td:has-text('failed')", timeout=5000)
            (ROOT / ".logs").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / ".logs" / "console.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], problems


def test_the_page_and_its_files_are_served_with_a_strict_policy(
    console_gateway: GatewayServer,
) -> None:
    """The page is public but holds no data; the data needs the admin key; only the listed files
    are served; a script on the page may load from this origin only."""
    base = console_gateway.base
    status, headers, page = http("GET", base + "/ui")
    assert status == 200 and b'<meta name="fr-auth" content="required">' in page
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    for name in ("console.js", "console.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        assert http("GET", f"{base}/ui/{name}")[0] == 200, name
    for name in ("../app.py", "views.py", "static/index.html", "%2e%2e/overview.py"):
        assert http("GET", f"{base}/ui/{name}")[0] == 404, name
    assert http("GET", base + "/api/admin/console")[0] == 401
    status, _, _ = http("GET", base + "/api/admin/console",
                        headers={"Authorization": f"Bearer {CLIENT_KEY}"})  # fmt: skip
    assert status == 403
