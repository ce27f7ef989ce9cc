"""The HTTP side: middleware, API keys, rate limits, input limits, request schemas, the SSE
relay (`streaming`), graceful drain, and the admin and ledger views.

May import every folder below it (not `services.gateway` or `services.app`, except the admin and
ledger views, which still take the whole runtime: a known exception in tests/test_layers.py)."""
