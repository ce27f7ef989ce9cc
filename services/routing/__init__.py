"""From a selector to an answer: the router (selector -> plan), the chain executor (the walk,
retries, deadlines, 400s), the per-deployment gate it walks through (`deployment_gate`), hedging,
the tiers, session pins, the response cache, the continuation of broken streams (`resume`,
`continuation`), and the end of a turn: its typed record and observers (`turn`, `turn_metrics`).

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`,
`services.resilience`."""
