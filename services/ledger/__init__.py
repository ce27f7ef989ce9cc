"""The usage ledger: the turn's metering and its ledger rows (`usage`), costs (`costs`), the
write-ahead log and its buffer (`wal`), the database schema, migrations, inserts and report
queries (`db`), files into the database (`ingest`), the external writer process (`writer`) and
the files it and the API processes exchange (`handoff`), the runtime the API process opens
(`runtime`), the operators' provider switches (`switches`), and a record with its framed WAL line
(`records`).

May import: `services.config`, `services.errors`, `services.platform`, `services.providers`,
`services.resilience`, `services.routing` (the turn record), `services.capacity`."""
