"""The process's plumbing: the Redis connection and its fail-open gate, Redis health checks,
logs, Prometheus metrics, the child-process supervisor and the request context.

May import: `services.config`, `services.errors`. Nothing here knows about routing, ledgers or
the planner (their metrics register themselves: `Metrics.extension`)."""
