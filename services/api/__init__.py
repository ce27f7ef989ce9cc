"""The HTTP side: middleware, API keys, rate limits, input limits, request schemas, the SSE
relay (`streaming`), graceful drain, and the admin and ledger views.

May import every other folder; only `services.app` and `services.gateway` import it."""
