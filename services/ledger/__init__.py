"""The usage ledger: the turn's metering and its ledger rows (`usage`), costs (`costs`), the
write-ahead log and its buffer (`wal`), the database schema, migrations, inserts and report
queries (`db`), the external writer process (`writer`), the runtime the API process opens
(`runtime`), the operators' provider switches (`switches`), and a record with its framed WAL line
(`records`).

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`,
`services.resilience`, `services.routing` (the turn record), `services.capacity`."""
