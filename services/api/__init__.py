"""The HTTP side: middleware, API keys, rate limits, input limits, request schemas, the SSE
relay (`streaming`), graceful drain, and the views: admin, ledger and operations (`ops`:
`/health`, `/readyz`, `/livez`, `/metrics`, `/v1/models`).

May import every folder below it (not `services.gateway` or `services.app`, except the admin,
ledger and operations views, which still take the whole runtime: known exceptions in
tests/test_layers.py)."""
