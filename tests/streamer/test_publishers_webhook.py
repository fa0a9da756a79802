"""The alert webhook against a real local HTTP server: retries, give-ups, a
bounded queue that never blocks the caller, only alerts sent."""

from __future__ import annotations

import time

from streamer.core.events import Alert
from streamer.publishers.base import encode
from streamer.publishers.webhook import WebhookPublisher
from tests.fixtures.http import webhook_server
from tests.fixtures.network import eventually


def alert(i: int) -> dict[str, object]:
    return Alert(
        f"call{i}.caller", "sustained_anger", "warning", f"angry for {i} s", i * 1000
    ).to_dict()


async def test_delivers_retries_and_gives_up() -> None:
    with webhook_server() as server:
        server.statuses = [503, 500, 200, 404]
        async with WebhookPublisher(
            server.url, retry_backoff_s=0.05, max_retries=3, token="hook-token"
        ) as hook:
            hook.publish(
                encode({"type": "emotion.estimate", "stream_id": "x"})
            )  # not an alert: ignored
            hook.publish(encode(alert(1)))  # 503, 500, then 200
            await eventually(lambda: hook.stats.published == 1, "the webhook")
            hook.publish(encode(alert(2)))  # 404: final, no retry
            await eventually(lambda: hook.counters.failed == 1, "the webhook")
        assert [a["stream_id"] for a in server.received] == ["call1.caller"]
        assert server.headers[0]["Authorization"] == "Bearer hook-token"
        assert server.headers[0]["Content-Type"] == "application/json"
        assert server.attempts == 4 and hook.counters.retries == 2
        assert hook.stats.dropped == 1 and hook.stats.lost_by_stream == {
            "call1.caller": 0,
            "call2.caller": 1,
        }  # the 404
        assert "404" in str(hook.last_error)


async def test_a_slow_or_dead_endpoint_never_blocks_and_losses_are_counted() -> None:
    with webhook_server() as server:
        server.delay_s = 0.5  # slower than the time limit
        async with WebhookPublisher(server.url, timeout_s=0.1, max_retries=1, retry_backoff_s=0.01,
                                    max_queue=5, close_timeout_s=0.5) as hook:  # fmt: skip
            t0 = time.perf_counter()
            for i in range(100):
                hook.publish(encode(alert(i)))
            assert time.perf_counter() - t0 < 0.05  # publish only queues
            await eventually(lambda: hook.counters.failed >= 1, "the webhook")
        # 100 alerts: at most one in flight, 5 queued; the rest dropped oldest-first, all counted
        # (dropped: every alert lost; failed: those of them given up on after the retries)
        assert (
            hook.stats.dropped + hook.stats.published == 100
            and hook.counters.failed <= hook.stats.dropped
        )
        assert hook.stats.dropped >= 94 and hook.stats.published == 0
    async with WebhookPublisher("http://127.0.0.1:9/none", timeout_s=0.2, max_retries=0) as dead:
        dead.publish(encode(alert(1)))
        await eventually(lambda: dead.counters.failed == 1, "the webhook")
    assert "Connection refused" in str(dead.last_error) or "Errno" in str(dead.last_error)
