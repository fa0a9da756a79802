"""What a rule does when it fires: small pluggable outputs, none of which blocks the rule loop.

Every output takes the action with :meth:`submit` (synchronous, never blocks,
never raises for a slow or missing peer) and counts what happened in its
``stats``: ``sent``, ``dropped`` (a bounded queue was full, or too many
commands were running) and ``failed`` (delivered but refused, or given up
after the retries).

The action document (``robot.action``, JSON) that mqtt, webhook and ros send::

    {"type": "robot.action", "v": 1, "rule": "calm_down", "stream_id": "head_mic",
     "seq": 42, "audio_ms": 12500, "duration_ms": 2000, "label": "angry",
     "confidence": 0.71, "arousal": 0.62, "valence": -0.48,
     "time": "2025-01-01T12:00:00.000Z"}

``time`` is when the rule fired (UTC); ``audio_ms`` is the stream's audio time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Protocol

from clients.robot.config import CommandAction, LogAction, MqttAction, RosAction, WebhookAction
from clients.robot.links import MqttLink, RosLink
from clients.robot.rules import Firing
from streamer.publishers.base import DropOldestQueue, encode
from streamer.publishers.mqtt import topic_segment

log = logging.getLogger(__name__)

ACTION_TYPE = "robot.action"


@dataclass
class OutputStats:
    sent: int = 0
    dropped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def action_document(firing: Firing, fired_at_s: float | None = None) -> dict[str, Any]:
    """The ``robot.action`` JSON for a firing (``time``: when it fired, UTC)."""
    at = datetime.fromtimestamp(time.time() if fired_at_s is None else fired_at_s, tz=timezone.utc)
    return {
        "type": ACTION_TYPE,
        "v": 1,
        **firing.fields(),
        "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def render(template: str, doc: dict[str, Any]) -> str:
    """A template filled from the action document (``{json}`` is the whole document)."""
    return template.format(**doc, json=json.dumps(doc, separators=(",", ":")))


class Output(Protocol):
    name: str
    stats: OutputStats

    def submit(self, doc: dict[str, Any]) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _Plain:
    """Outputs without a background task."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class LogOutput(_Plain):
    def __init__(self, rule: str, action: LogAction) -> None:
        self.name = f"{rule}:log"
        self.level = logging.WARNING if action.level == "warning" else logging.INFO
        self.stats = OutputStats()

    def submit(self, doc: dict[str, Any]) -> None:
        log.log(self.level, "rule %s fired on %s: %s %.0f%% for %.1f s (seq %d, audio %.1f s)",
                doc["rule"], doc["stream_id"], doc["label"], 100 * doc["confidence"],
                doc["duration_ms"] / 1000, doc["seq"], doc["audio_ms"] / 1000)  # fmt: skip
        self.stats.sent += 1


class MqttOutput(_Plain):
    """Publish to the robot's command topic through the shared :class:`MqttLink`."""

    def __init__(self, rule: str, action: MqttAction, link: MqttLink) -> None:
        self.name = f"{rule}:mqtt"
        self.action, self.link = action, link
        self.stats = OutputStats()

    def submit(self, doc: dict[str, Any]) -> None:
        topic = render(self.action.topic, {**doc, "stream_id": topic_segment(doc["stream_id"])})
        payload = (
            json.dumps(doc, separators=(",", ":"))
            if self.action.payload is None
            else render(self.action.payload, doc)
        )
        self.link.publish(topic, payload.encode(), self.action.qos, self.action.retain)
        self.stats.sent += 1


class WebhookOutput:
    """POST the action through the daemon's webhook publisher (bounded queue, retries, on its own task)."""

    def __init__(self, rule: str, action: WebhookAction) -> None:
        from streamer.publishers.webhook import WebhookPublisher

        self.name = f"{rule}:webhook"
        self.publisher = WebhookPublisher(
            action.url, timeout_s=action.timeout_s, max_retries=action.max_retries,
            retry_backoff_s=action.retry_backoff_s, max_queue=action.max_queue,
            token=action.bearer_token(), types=(ACTION_TYPE,),
        )  # fmt: skip
        self.stats = OutputStats()

    def submit(self, doc: dict[str, Any]) -> None:
        self.publisher.publish(encode(doc))
        self._sync()

    def _sync(self) -> None:
        c = self.publisher.counters
        self.stats.sent, self.stats.dropped, self.stats.failed = c.published, c.dropped, c.failed

    async def __aenter__(self) -> WebhookOutput:
        await self.publisher.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.publisher.__aexit__(exc_type, exc, tb)
        self._sync()


class CommandOutput:
    """Run a program (argument list, no shell) per firing; at most ``max_running`` at once."""

    def __init__(self, rule: str, action: CommandAction) -> None:
        self.name = f"{rule}:command"
        self.action = action
        self.stats = OutputStats()
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, doc: dict[str, Any]) -> None:
        if len(self._running) >= self.action.max_running:
            self.stats.dropped += 1
            log.warning("command %s: %d run(s) still going; this firing is dropped (%d so far)",
                        self.action.argv[0], len(self._running), self.stats.dropped)  # fmt: skip
            return
        argv = [render(arg, doc) for arg in self.action.argv]
        env = {
            **os.environ,
            "EMOTION_ACTION": json.dumps(doc, separators=(",", ":")),
            **{f"EMOTION_{k.upper()}": str(v) for k, v in doc.items() if k not in ("type", "v")},
        }
        task = asyncio.get_running_loop().create_task(self._run(argv, env))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, argv: list[str], env: dict[str, str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            self.stats.failed += 1
            log.error("command %r cannot run (%s); check the rule's argv", argv[0], exc)
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.action.timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            proc.kill()
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.stats.failed += 1
            log.warning("command %r ran past %.1f s and was killed", argv[0], self.action.timeout_s)
            return
        if proc.returncode == 0:
            self.stats.sent += 1
        else:
            self.stats.failed += 1
            tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
            log.warning(
                "command %r exited with %s%s",
                argv[0],
                proc.returncode,
                f": {tail[0]}" if tail else "",
            )

    async def __aenter__(self) -> CommandOutput:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._running:
            await asyncio.wait(list(self._running), timeout=self.action.timeout_s)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running))


class RosOutput:
    """Advertise ``topic`` with ``message_type`` on rosbridge and publish each action there.

    Messages wait in a bounded queue while rosbridge is away (the oldest dropped
    and counted); after a reconnection the topic is advertised again before
    the next publish.
    """

    def __init__(self, rule: str, action: RosAction, link: RosLink) -> None:
        self.name = f"{rule}:ros"
        self.action, self.link = action, link
        self.stats = OutputStats()
        self._queue: DropOldestQueue[dict[str, Any]] = DropOldestQueue(action.max_queue)
        self._topic: Any = None
        self._task: asyncio.Task[None] | None = None

    def message(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The ROS message for an action document, for ``message_type``."""
        if self.action.message_type.replace("/msg/", "/") == "std_msgs/String":
            return {"data": json.dumps(doc, separators=(",", ":"))}
        fired = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
        sec = int(fired)
        return {
            "time": {"sec": sec, "nanosec": int(round((fired - sec) * 1e9))},
            "rule": doc["rule"],
            "stream": doc["stream_id"],
            "expression": doc["label"],
            "confidence": float(doc["confidence"]),
            "arousal": float(doc["arousal"]),
            "valence": float(doc["valence"]),
        }

    def submit(self, doc: dict[str, Any]) -> None:
        if self._queue.put(self.message(doc)):
            self.stats.dropped += 1
            log.warning(
                "ros: rosbridge away; dropped the oldest message (%d so far)", self.stats.dropped
            )

    async def __aenter__(self) -> RosOutput:
        import roslibpy

        # reconnect_on_close=False: after a reconnection the next publish advertises again first
        self._topic = roslibpy.Topic(self.link.ros, self.action.topic, self.action.message_type,
                                     reconnect_on_close=False)  # fmt: skip
        self._topic.advertise()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        return self

    async def _run(self) -> None:
        import roslibpy

        while True:
            await self._queue.wait()
            await self.link.wait_connected()
            self._topic.publish(roslibpy.Message(self._queue.get_nowait()))
            self.stats.sent += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for _ in range(20):  # a moment to hand over what is queued
            if not len(self._queue) or not self.link.connected:
                break
            await asyncio.sleep(0.05)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self.stats.dropped += len(self._queue.drain())
