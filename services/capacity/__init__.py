"""The capacity planner: its pure decisions (`policy`), signals (`signals`), the state it shares
with the API through Redis (`state`), the loop (`planner`) and the scalers (`scalers`:
simulated and process; `kubernetes`).

May import: `services.config`, `services.errors`, `services.platform`."""
