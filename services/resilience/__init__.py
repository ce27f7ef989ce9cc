"""What keeps a failing upstream from hurting: circuit breakers (pure transitions and their
Redis store), the health monitor, the retry budget, backoff, the per-attempt watchdog and the
fallback statistics.

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`."""
