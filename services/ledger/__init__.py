"""The usage ledger: records and costs (`usage`, `costs`), the write-ahead log and its buffer
(`wal`), the database schema, migrations, inserts and report queries (`db`) and the external
writer process (`writer`).

May import: `services.config`, `services.errors`, `services.platform`, `services.routing` (the
attempt log), `services.capacity` (the load counters a finished request feeds), and, as a known
exception that tests/test_layers.py lists, `services.api.rate_limit` (the tokens it spends;
issue 12 turns both into observers of one turn record)."""
