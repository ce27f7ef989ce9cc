"""Alerts: signed webhooks for what operators must hear about, sent off the request path.

    events.py   an alert, its JSON body and its HMAC-SHA256 signature (pure)
    sender.py   the queue, the once-across-processes claim in Redis, delivery with retries and
                backoff, and the dry run of POST /api/admin/alerts/test

Sources call `AlertSender.emit` (no I/O, never blocks): breakers and health through their
`on_change` hooks (wired in services/gateway.py), budgets when a key crosses its threshold, the
ledger's daily cost watch, and the capacity planner's scale actions. docs/alerts.md says what each
event carries.

Imports: config, errors, platform; imported by capacity, ledger, api and the wiring.
"""
