"""From a selector to an answer: the router (selector -> plan), the chain executor (the walk,
retries, hedging, deadlines, 400s), the tiers, session pins, the response cache and the
continuation of broken streams.

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`,
`services.resilience`."""
