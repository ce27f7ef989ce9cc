"""The process's plumbing: the Redis connection and its fail-open gate, Redis health checks,
logs, Prometheus metrics, the child-process supervisor, the request context, and the outbound
HTTP/1.1 client (`http_client.py`) the adapters and the alert webhooks share.

May import: `services.config`, `services.errors`. Nothing here knows about routing, ledgers or
the planner (their metrics register themselves: `Metrics.extension`)."""
