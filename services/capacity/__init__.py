"""The capacity planner: its pure decisions (`policy`), signals (`signals`), the state it shares
with the API through Redis (`state`, with the API's load counter), the loop (`planner`), the
scalers (`scalers`: simulated and process; `kubernetes`), and the API side that routes to the
planner's replicas (`replicas`, with its Prometheus gauges in `gauges`).

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`,
`services.resilience`, `services.routing`."""
