"""The process's plumbing: the Redis connection and its fail-open gate, Redis health checks,
logs, Prometheus metrics, the child-process supervisor, the request context, the outbound
HTTP/1.1 client (`http_client.py`) the adapters and the alert webhooks share, and a thread at
idle CPU priority for deferred work (`idle_lane.py`).

May import: `services.config`, `services.errors`. Nothing here knows about routing, ledgers or
the planner (their metrics register themselves: `Metrics.extension`)."""
