"""The HTTP side: the request path (`chat`: sessions and chat turns), the views (`ops`: `/health`,
`/readyz`, `/livez`, `/metrics`, `/v1/models`; `admin`: breakers and fallback; `ledger_views`:
`/api/llm/*`), the middleware, API keys, rate limits, input limits, request schemas, the OpenAPI
document, the SSE relay (`streaming`), graceful drain, per-key budgets (`budgets`,
`budget_views`) and uvicorn's HTTP protocol with a head-size limit and a client deadline
(`http_guard`).

Handlers receive the gateway's parts they read (a Protocol per module, `parts.py`), never the
gateway module itself. May import every folder below it; not `services.gateway` or `services.app`.
"""
