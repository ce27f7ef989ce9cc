"""Sending alerts: a bounded queue that `emit` fills without I/O, and a loop that claims each
alert once across processes and delivers it to every webhook that wants its event.

Delivery: POST of the JSON body, signed (services/alerts/events.py), within `timeout_seconds`;
a connection error, a timeout, 408, 429 or 5xx is retried after 1 s, 2 s, 4 s ... (at most
`max_backoff_seconds`), `max_attempts` times in all; any other answer is final. Deliveries run
concurrently (at most `MAX_CONCURRENT`), so one slow receiver delays no other alert.

Once across processes: an alert with a `dedupe` key is sent by the process that first claims that
key in Redis (SET NX with an expiry); the others drop it. With Redis unreachable every process
sends its own (a duplicate beats a lost alert). Webhook URLs can carry tokens (Slack's do): logs
name only their scheme and host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from loguru import logger

from services.alerts.events import Alert, headers
from services.config import AlertSettings, WebhookSettings
from services.errors import HTTPClientError
from services.platform.http_client import HTTPClient
from services.platform.redis_gate import REDIS_ERRORS, RedisGate

MAX_CONCURRENT = 8
RETRYABLE = frozenset({408, 429})


def safe_url(url: str) -> str:
    """A webhook URL as logs may show it: scheme and host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class AlertSender:
    """The alerts of one process."""

    def __init__(
        self,
        settings: AlertSettings,
        environ: Mapping[str, str],
        redis: aioredis.Redis | None,
        gate: RedisGate | None,
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._environ = environ
        self._redis = redis
        self._gate = gate
        self._prefix = f"{prefix}alert:"
        self._clock = clock
        self._sleep = sleep
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(settings.queue_size)
        self._http: HTTPClient | None = None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "claimed_elsewhere": 0}

    @property
    def enabled(self) -> bool:
        return bool(self._settings.webhooks)

    def wanted(self, event: str) -> bool:
        return any(webhook.wants(event) for webhook in self._settings.webhooks)

    def emit(self, alert: Alert) -> None:
        """Queue an alert (no I/O: safe on the request path); the oldest goes when full."""
        if not self.wanted(alert.event):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.counts["dropped"] += 1
        self._queue.put_nowait(alert)

    async def run(self) -> None:
        """Claim and deliver queued alerts while the process runs."""
        while True:
            alert = await self._queue.get()
            if not await self._claim(alert):
                self.counts["claimed_elsewhere"] += 1
                continue
            for webhook in self._settings.webhooks:
                if webhook.wants(alert.event):
                    task = asyncio.create_task(self._deliver(webhook, alert))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def test(self, url: str | None = None) -> list[dict[str, Any]]:
        """Send a `test` alert to every webhook (or the one with `url`) now, once, and say how
        each answered: the dry run behind POST /api/admin/alerts/test."""
        alert = Alert("test", "webhook", "a test alert from Fallback Routing")
        targets = [w for w in self._settings.webhooks if url is None or w.url == url]
        return [await self._attempt(webhook, alert) for webhook in targets]

    def status(self) -> dict[str, Any]:
        """Webhooks (scheme and host only), their events, and what was sent."""
        return {
            "webhooks": [{"url": safe_url(w.url), "events": list(w.events),
                          "signed": self._secret(w) is not None}
                         for w in self._settings.webhooks],
            "pending": self._queue.qsize() + len(self._tasks),
            **self.counts,
        }  # fmt: skip

    async def close(self) -> None:
        """Give deliveries under way a moment, then stop them and close the client."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.timeout_seconds)
        for task in self._tasks:
            task.cancel()
        if self._http is not None:
            await self._http.close()

    # -- internals -----------------------------------------------------------------------------

    async def _claim(self, alert: Alert) -> bool:
        """Whether this process sends `alert` (it claimed its dedupe key, or it has none)."""
        if alert.dedupe is None or self._redis is None or self._gate is None:
            return True
        if not self._gate.available:
            return True
        ttl_ms = int((alert.dedupe_seconds or self._settings.dedupe_seconds) * 1000)
        try:
            claimed = await self._redis.set(self._prefix + alert.dedupe, alert.id, nx=True,
                                            px=ttl_ms)  # fmt: skip
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            return True
        return bool(claimed)

    def _secret(self, webhook: WebhookSettings) -> str | None:
        if webhook.secret:
            return webhook.secret
        return self._environ.get(webhook.secret_env) if webhook.secret_env else None

    async def _deliver(self, webhook: WebhookSettings, alert: Alert) -> None:
        """Post until an answer is final or the attempts are spent, backing off in between."""
        async with self._slots:
            for attempt in range(1, self._settings.max_attempts + 1):
                result = await self._attempt(webhook, alert)
                if result["ok"]:
                    self.counts["sent"] += 1
                    return
                if not result["retryable"] or attempt == self._settings.max_attempts:
                    break
                wait = self._settings.backoff_seconds * 2 ** (attempt - 1)
                await self._sleep(min(wait, self._settings.max_backoff_seconds))
            self.counts["failed"] += 1
            logger.warning("alert {} ({}) to {} failed after {} attempts: {}", alert.event,
                           alert.subject, safe_url(webhook.url), attempt,
                           result["error"] or f"HTTP {result['status']}")  # fmt: skip

    async def _attempt(self, webhook: WebhookSettings, alert: Alert) -> dict[str, Any]:
        """One POST; what came back."""
        if self._http is None:
            # The process's own client, not the upstreams' pool: a flood of alerts must not
            # take connections from chat turns. Redirects are never followed.
            self._http = HTTPClient(max_connections=16)
        body = alert.body()
        status, error = None, None
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                resp = await self._http.request(
                    "POST", webhook.url, body=body,
                    headers=headers(alert, body, self._secret(webhook), self._clock()),
                )  # fmt: skip
                status = resp.status
                try:
                    await resp.read(65_536)  # drain a little; the answer is not used
                finally:
                    resp.release()
        except (HTTPClientError, TimeoutError) as exc:
            error = type(exc).__name__
        ok = status is not None and 200 <= status < 300
        retryable = not ok and (status is None or status >= 500 or status in RETRYABLE)
        return {"url": safe_url(webhook.url), "ok": ok, "status": status, "error": error,
                "retryable": retryable}  # fmt: skip
