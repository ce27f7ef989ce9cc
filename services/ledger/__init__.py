"""The usage ledger: records and costs (`usage`, `costs`), the write-ahead log and its buffer
(`wal`), the database schema, migrations, inserts and report queries (`db`) and the external
writer process (`writer`).

May import: `services.config`, `services.errors`, `services.platform`, `services.routing` (the
attempt log), `services.capacity.state` and `services.api.rate_limit` (the load and token
counters a finished request feeds; issue 12 turns these into observers)."""
