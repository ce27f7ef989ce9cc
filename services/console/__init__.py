"""The operator console: the `/ui` page and its static files (plain HTML, CSS and JS, with
uPlot vendored as one file: no build step), and `/api/admin/console`, the one admin read the page
refreshes (deployments with breaker, health, latency and success; chains with what is usable now;
the planner and its decisions; recent failovers and errors). Costs and trends come from the
ledger's own `/api/llm/*` views; the page's buttons call the existing admin routes.

Imports: config, platform, resilience, routing, capacity, ledger and api (its parts and
responses); imported only by the app.
"""
