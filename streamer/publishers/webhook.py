"""POST ``alert`` events to an HTTP(S) webhook, never blocking the pipeline.

Only ``alert`` events are sent (everything else is ignored, not counted as
dropped). ``publish()`` puts the alert in a bounded queue and returns; when
the queue is full the OLDEST alert is dropped and counted (``stats.dropped``).
A background task POSTs each alert as JSON (``Content-Type:
application/json``, optional ``Authorization: Bearer``) with a time limit per
attempt; a network error, a time-out, 408, 429 or a 5xx answer is retried up
to ``max_retries`` times with doubling back-off, any other non-2xx answer is
final. Alerts that fail every attempt are counted in ``failed`` and, like
those pushed out of a full queue and those left when the queue gets
``close_timeout_s`` to drain on close, in ``dropped`` (per stream too: each
stream's status carries ``lost_webhook``).

The HTTP client is the standard library's ``urllib`` on a worker thread (one
request at a time), so the event loop never waits for the network.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from streamer.publishers.base import DropOldestQueue, Message, PublisherStats, should_log

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429})


@dataclass
class WebhookStats(PublisherStats):
    """``published``: alerts delivered (2xx); ``dropped``: alerts lost for any reason;
    ``failed``: those of them given up on after every retry; ``retries``: extra attempts made."""

    failed: int = 0
    retries: int = 0


class WebhookPublisher:
    """Send every ``alert`` event to ``url``; see the module docstring.

    Args:
        url: ``http://`` or ``https://`` URL the alerts are POSTed to (the config models check it).
        timeout_s: time limit of one attempt, seconds.
        max_retries: further attempts after a retryable failure.
        retry_backoff_s: wait before the first retry (doubles each time).
        max_queue: alerts waiting; the oldest is dropped beyond this.
        token: sent as ``Authorization: Bearer <token>`` when set.
        close_timeout_s: time the queue gets to drain on close.
        types: the event types posted (default ``("alert",)``; the robot client posts
            its ``robot.action`` events).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_retries: int = 3,
        retry_backoff_s: float = 1.0,
        max_queue: int = 100,
        token: str | None = None,
        close_timeout_s: float = 5.0,
        types: tuple[str, ...] = ("alert",),
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.close_timeout_s = close_timeout_s
        self.types = frozenset(types)
        self.counters = WebhookStats()
        self.stats: PublisherStats = self.counters  # the hub reports every field
        self.last_error: str | None = None
        self._headers = {"Content-Type": "application/json", "User-Agent": "emotion-monitor"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._queue: DropOldestQueue[tuple[str | None, str]] = DropOldestQueue(max_queue)
        self._idle = asyncio.Event()
        self._idle.set()
        self._runner: asyncio.Task[None] | None = None
        # no proxies from the environment: alerts go where the config says
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def publish(self, message: Message) -> None:
        """Queue an ``alert`` (or another of ``types``) for delivery; other messages are
        ignored. Never blocks."""
        if message.type not in self.types:
            return
        self.stats.track(message.stream_id)
        self._idle.clear()
        dropped = self._queue.push((message.stream_id, message.text))
        if dropped is not None:
            self.stats.lose(dropped[0])
            if should_log(self.stats.dropped):
                log.warning(
                    "webhook: queue full, dropped the oldest alert (%d so far)", self.stats.dropped
                )

    async def __aenter__(self) -> WebhookPublisher:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="webhook")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.close_timeout_s)
        except asyncio.TimeoutError:
            pass
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        left = self._queue.drain()
        for sid, _ in left:
            self.stats.lose(sid)
        if left:
            log.warning(
                "webhook: closing with %d alert(s) undelivered (%d lost in all)",
                len(left),
                self.stats.dropped,
            )

    async def _run(self) -> None:
        while True:
            if not len(self._queue):
                self._idle.set()
            await self._queue.wait()
            sid, body = self._queue.get_nowait()
            try:
                if not await self._deliver(body):
                    self.stats.lose(sid)
            except asyncio.CancelledError:
                self.stats.lose(sid)  # in flight when the publisher closed
                raise

    async def _deliver(self, body: str) -> bool:
        """POST ``body`` with retries; whether it was delivered."""
        delay_s = self.retry_backoff_s
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.counters.retries += 1
                await asyncio.sleep(delay_s)
                delay_s *= 2
            status, error = await asyncio.to_thread(self._post, body.encode("utf-8"))
            if status is not None and 200 <= status < 300:
                self.stats.published += 1
                self.last_error = None
                return True
            self.last_error = error or f"HTTP {status}"
            if status is not None and status < 500 and status not in RETRY_STATUS:
                break  # the server refused it for good
        self.counters.failed += 1
        log.warning(
            "webhook: could not deliver an alert to %s (%s); %d failed in all",
            self.url,
            self.last_error,
            self.counters.failed,
        )
        return False

    def _post(self, body: bytes) -> tuple[int | None, str | None]:
        """One POST (on a worker thread): ``(status, None)`` or ``(None, error)``."""
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(65536)
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return int(exc.code), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"{type(exc).__name__}: {reason}"

    def health(self) -> dict[str, Any]:
        """Counters (for ``/healthz``)."""
        return {**self.stats.as_dict(), "queued": len(self._queue), "last_error": self.last_error}
