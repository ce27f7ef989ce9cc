"""An alert and how it travels: its JSON body and the signature of that body (pure).

The signature follows the common webhook scheme (Stripe's, GitHub's): the receiver recomputes

    HMAC-SHA256(secret, f"{X-FR-Timestamp}.{raw body}")

and compares it, in constant time, with the hex digest after `sha256=` in `X-FR-Signature`; the
timestamp inside the signed text lets it refuse a replayed delivery that is too old.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from services import __version__

SIGNATURE_HEADER = "X-FR-Signature"
TIMESTAMP_HEADER = "X-FR-Timestamp"
EVENT_HEADER = "X-FR-Event"
DELIVERY_HEADER = "X-FR-Delivery"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator should hear about."""

    event: str  # services/config/observability.py AlertEvent
    subject: str  # what it is about: a deployment, a model, a key id, a day
    message: str  # one line for a human
    details: dict[str, Any] = field(default_factory=dict)
    # The same occurrence as every process sees it (a breaker's trip, a day's cost): sent once.
    dedupe: str | None = None
    dedupe_seconds: float | None = None  # how long the claim lasts (default: alerts.dedupe_seconds)
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: os.urandom(8).hex())

    def body(self) -> bytes:
        return orjson.dumps({
            "id": self.id, "event": self.event, "subject": self.subject, "message": self.message,
            "details": self.details, "ts": self.ts, "source": f"fallback-routing/{__version__}",
        })  # fmt: skip


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(alert: Alert, body: bytes, secret: str | None, now: float) -> dict[str, str]:
    """The delivery's headers; signed when the webhook has a secret."""
    timestamp = str(int(now))
    out = {
        "Content-Type": "application/json",
        "User-Agent": f"fallback-routing/{__version__}",
        EVENT_HEADER: alert.event,
        DELIVERY_HEADER: alert.id,
        TIMESTAMP_HEADER: timestamp,
    }
    if secret:
        out[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return out


def verify(secret: str, timestamp: str, body: bytes, presented: str) -> bool:
    """What a receiver does (and the tests do): recompute and compare in constant time."""
    return hmac.compare_digest(signature(secret, timestamp, body), presented)
