"""MQTT 5 publisher (aiomqtt): estimates, utterances, state, status and alerts per stream.

Topics under ``prefix`` (default ``emotion``), with ``<sid>`` the stream id
made topic-safe (``/``, ``+``, ``#`` and NUL become ``_``):

====================================  ========  ==========================
topic                                 retained  published on
====================================  ========  ==========================
``<prefix>/<sid>/estimate``           no        ``emotion.estimate``
``<prefix>/<sid>/utterance``          no        ``emotion.utterance``
``<prefix>/<sid>/state``              yes       ``emotion.transition``
``<prefix>/<sid>/status``             yes       ``stream.status``
``<prefix>/<sid>/alert``              no        ``alert``
``<prefix>/_daemon/status``           yes       connect (online), close, last will
====================================  ========  ==========================

Liveness. MQTT allows one last will per connection, so the will is
daemon-level: ``<prefix>/_daemon/status`` = ``{"state": "offline"}``
(retained), overwritten with ``online`` on every (re)connect. On a graceful
close every known stream's ``/status`` is set to ``offline`` as well. A client
should treat a stream as live only if ``_daemon/status`` is ``online`` AND the
stream's own ``/status`` is not ``offline`` (after a crash, stream statuses
keep their last value and only the daemon status flips).

Delivery. ``publish()`` never blocks or raises. Estimates, utterances and
alerts wait in a bounded queue (``max_queue`` in all); when it is full the
OLDEST ESTIMATE is dropped (an utterance or alert only when no estimate is
queued: one of them stands for many estimates), and every drop is
counted, per stream too (``stats.lost_by_stream``: each stream's status
carries it as ``lost_mqtt``). Retained messages are never dropped: only the
latest value per topic is kept (an older one not yet sent is superseded and
counted in ``superseded``); they are sent first, then alerts and utterances
(in the order they came), then estimates, and re-sent after every reconnect (so a broker restarted without
persistence gets them back). What is still queued when the publisher closes
is counted as lost. A background task connects and reconnects forever with
jittered exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``);
the reason of the last failure is in :attr:`last_error`, and each reconnect
logs how much was lost during the outage.

Estimates go out without their optional ``importance`` object unless
``importance=True`` (it adds about 1 kB to each). With ``home_assistant=True``
each stream is announced to Home Assistant when first seen (retained discovery
configs, :mod:`streamer.publishers.home_assistant`) and removed (empty retained
configs) when :meth:`MqttPublisher.forget` says it is gone for good.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamer.config import MqttConfig
from streamer.core.events import COUNTER_NAMES
from streamer.publishers.base import Message, PublisherStats, encode_json
from streamer.publishers.home_assistant import config_topic, discovery_configs

log = logging.getLogger(__name__)

#: event type -> (topic suffix, retained)
ROUTES: dict[str, tuple[str, bool]] = {
    "emotion.estimate": ("estimate", False),
    "emotion.utterance": ("utterance", False),
    "emotion.transition": ("state", True),
    "stream.status": ("status", True),
    "alert": ("alert", False),
}
DAEMON_SEGMENT = "_daemon"
_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3 bad credentials / not authorised; MQTT 5 the same


def topic_segment(stream_id: str) -> str:
    """``stream_id`` as one topic level: wildcards, separators and NUL become ``_``."""
    out = "".join("_" if ch in "/+#\x00" else ch for ch in stream_id)
    return out or "_"


def _reason_code(exc: BaseException) -> int | None:
    """The numeric MQTT reason code of an aiomqtt error, if it has one."""
    rc = getattr(exc, "rc", None)
    if rc is None:
        return None
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else None


def _json(obj: dict[str, Any]) -> bytes:
    return encode_json(obj).encode()


_Item = tuple[str | None, str, bytes]  # (stream id, topic, payload)


@dataclass
class MqttStats(PublisherStats):
    """``superseded``: retained values replaced by a newer one before they were sent (the
    topic's latest value is what counts; not a loss); ``ignored``: events without a topic."""

    superseded: int = 0
    ignored: int = 0


class _Outbox:
    """Estimates, utterances and alerts waiting for the broker, ``maxsize`` in all. When
    full, the oldest estimate makes room (the oldest alert or utterance, which share the
    ``alerts`` queue, only when no estimate is left); they go out before estimates."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.estimates: deque[_Item] = deque()
        self.alerts: deque[_Item] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.estimates) + len(self.alerts)

    def _trim(self) -> list[_Item]:
        dropped = []
        while len(self) > self.maxsize:
            dropped.append((self.estimates or self.alerts).popleft())
        return dropped

    def put(self, item: _Item, *, estimate: bool) -> list[_Item]:
        """Queue ``item``; returns what was dropped to make room."""
        (self.estimates if estimate else self.alerts).append(item)
        self._ready.set()
        return self._trim()

    def put_back(self, item: _Item, *, estimate: bool) -> list[_Item]:
        """Return an item that could not be delivered to the front; returns what was dropped."""
        (self.estimates if estimate else self.alerts).appendleft(item)
        self._ready.set()
        return self._trim()

    def take(self) -> tuple[_Item, bool]:
        """The next item to send and whether it is an estimate (``IndexError`` when empty)."""
        if self.alerts:
            return self.alerts.popleft(), False
        return self.estimates.popleft(), True

    def drain(self) -> list[_Item]:
        items = [*self.alerts, *self.estimates]
        self.alerts.clear()
        self.estimates.clear()
        return items

    async def wait(self) -> None:
        if len(self):
            return
        self._ready.clear()
        await self._ready.wait()

    def wake(self) -> None:
        self._ready.set()


class MqttPublisher:
    """Publish events to an MQTT broker; see the module docstring.

    Args:
        cfg: the ``publish.mqtt`` section (broker, credentials, TLS, topics, queue, back-off).
        password: the broker password (default: ``cfg.password_value()``, which reads
            the environment variable when the config has none).
        close_timeout_s: how long a graceful close waits to deliver what is queued.
        timeout_s: how long one connect or publish may take.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        password: str | None = None,
        close_timeout_s: float = 3.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.host, self.port, self.prefix, self.qos = cfg.host, cfg.port, cfg.prefix, cfg.qos
        self.username, self.client_id = cfg.username, cfg.client_id
        self.password = password if password is not None else cfg.password_value()
        self.keepalive_s = cfg.keepalive_s
        self.reconnect_min_s, self.reconnect_max_s = cfg.reconnect_min_s, cfg.reconnect_max_s
        self.close_timeout_s, self.timeout_s = close_timeout_s, timeout_s
        self.importance, self.home_assistant = cfg.importance, cfg.home_assistant
        self.discovery_prefix = cfg.discovery_prefix
        self._last_status: dict[str, dict[str, Any]] = {}
        self.counters = MqttStats()
        self.stats: PublisherStats = self.counters  # the hub reports every field
        self.connects = 0
        self.connected = False
        self.last_error: str | None = None
        self.daemon_topic = f"{self.prefix}/{DAEMON_SEGMENT}/status"
        self._queue = _Outbox(cfg.max_queue)
        self._retained: dict[str, tuple[str | None, bytes]] = {}  # topic -> (stream id, payload)
        self._dirty: dict[str, None] = {}  # retained topics not yet sent (ordered set)
        self._streams: dict[str, None] = {}
        self._forget_after_send: set[str] = set()  # retained topics of ended streams
        self._ignored_types: set[str] = set()
        self._drained = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._lost_reported = (
            0  # stats.dropped at the last connect (the outage's losses are logged)
        )
        self._props = Properties(PacketTypes.PUBLISH)
        self._props.ContentType = "application/json"

    def topic(self, stream_id: str, kind: str) -> str:
        """The topic of ``kind`` (estimate, utterance, state, status, alert) for ``stream_id``."""
        return f"{self.prefix}/{topic_segment(stream_id)}/{kind}"

    # -- publishing ---------------------------------------------------------
    def publish(self, message: Message) -> None:
        """Route ``message`` to its topic and queue it; never blocks or raises."""
        kind, sid = message.type, message.stream_id
        route = ROUTES.get(kind) if kind is not None else None
        if route is None or sid is None:
            self.counters.ignored += 1
            key = f"{kind!r}" if route is None else f"{kind!r} without stream_id"
            if key not in self._ignored_types:
                self._ignored_types.add(key)
                log.warning("mqtt: events of type %s have no MQTT topic; not published", key)
            return
        payload = message.text_for(self.importance).encode()
        self.stats.track(sid)
        if sid not in self._streams:
            self._streams[sid] = None
            if self.home_assistant:
                self._announce(sid)
        if kind == "stream.status":
            self._last_status[sid] = dict(message.event)
        topic = self.topic(sid, route[0])
        self._drained.clear()
        if route[1]:
            self._set_retained(topic, payload, sid)
            return
        for lost in self._queue.put((sid, topic, payload), estimate=kind == "emotion.estimate"):
            self.stats.lose(lost[0])
            if self.stats.dropped in (1, 100) or self.stats.dropped % 10000 == 0:
                log.warning(
                    "mqtt: broker slow or unreachable; dropped %d message(s) so far "
                    "(queue of %d; the oldest estimates go first)",
                    self.stats.dropped,
                    self._queue.maxsize,
                )

    def forget(self, stream_id: str) -> None:
        """An ended stream: its retained topics stay on the broker (status offline,
        last state) but this publisher stops keeping them once they are delivered.
        Its Home Assistant entities are removed (empty retained configs)."""
        self._streams.pop(stream_id, None)
        self._last_status.pop(stream_id, None)
        for kind in ("state", "status"):
            topic = self.topic(stream_id, kind)
            if topic in self._dirty:
                self._forget_after_send.add(topic)
            else:
                self._retained.pop(topic, None)
        if self.home_assistant:
            for obj in ("label", "confidence", "arousal", "valence"):
                topic = config_topic(self.discovery_prefix, self.prefix, stream_id, obj)
                self._set_retained(topic, b"", None)
                self._forget_after_send.add(topic)

    def _announce(self, stream_id: str) -> None:
        """Home Assistant discovery configs for a stream seen for the first time (retained)."""
        configs = discovery_configs(
            self.discovery_prefix, self.prefix, stream_id, topic_segment(stream_id), qos=self.qos
        )
        for topic, doc in configs.items():
            self._set_retained(topic, _json(doc), None)

    def _set_retained(self, topic: str, payload: bytes, stream_id: str | None) -> None:
        self._forget_after_send.discard(topic)
        if topic in self._dirty:
            self.counters.superseded += 1
        self._retained[topic] = (stream_id, payload)
        self._dirty[topic] = None
        self._queue.wake()

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> MqttPublisher:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="mqtt-publisher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sid in self._streams:
            last = self._last_status.get(sid) or {
                "type": "stream.status",
                "v": 1,
                "stream_id": sid,
                "audio_ms": 0,
                "counters": dict.fromkeys(COUNTER_NAMES, 0),
            }
            if last.get("state") in ("offline", "error"):
                continue  # the stream said goodbye itself
            self._set_retained(
                self.topic(sid, "status"),
                _json({**last, "state": "offline", "detail": "daemon stopped"}),
                sid,
            )
        self._set_retained(
            self.daemon_topic, self._daemon_status("offline", "daemon stopped"), None
        )
        self._drained.clear()
        if self.connected:
            try:
                await asyncio.wait_for(self._drained.wait(), self.close_timeout_s)
            except asyncio.TimeoutError:
                pass
        left: list[str | None] = [sid for sid, _, _ in self._queue.drain()]
        left += [self._retained[t][0] for t in self._dirty]
        self._dirty.clear()
        for owner in left:
            self.stats.lose(owner)
        if left:
            log.warning(
                "mqtt: closing with %d message(s) undelivered (broker %s:%d %s); %d lost in all",
                len(left),
                self.host,
                self.port,
                "slow" if self.connected else "unreachable",
                self.stats.dropped,
            )
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])

    def _daemon_status(self, state: str, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {"type": "daemon.status", "v": 1, "state": state}
        if reason:
            doc["reason"] = reason
        return _json(doc)

    def _client(self) -> aiomqtt.Client:
        tls = self.cfg.tls
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.keepalive_s,
            timeout=self.timeout_s,
            logger=logging.getLogger(__name__ + ".client"),
            will=aiomqtt.Will(
                self.daemon_topic,
                self._daemon_status("offline", "connection lost"),
                qos=1,
                retain=True,
            ),
            tls_params=aiomqtt.TLSParameters(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
            )
            if tls is not None
            else None,
            tls_insecure=tls.insecure if tls is not None else None,
        )

    async def _run(self) -> None:
        """Connect, serve, and on any failure reconnect with jittered backoff, forever."""
        delay_s, failures = self.reconnect_min_s, 0
        while True:
            try:
                async with self._client() as client:
                    self.connected, self.last_error = True, None
                    self.connects += 1
                    lost = self.stats.dropped - self._lost_reported
                    self._lost_reported = self.stats.dropped
                    log.log(
                        logging.WARNING if lost else logging.INFO,
                        "mqtt: connected to %s:%d%s%s",
                        self.host,
                        self.port,
                        f" after {failures} failed attempt(s)" if failures else "",
                        f"; {lost} message(s) lost while disconnected ({self.stats.dropped} in all)"
                        if lost
                        else "",
                    )
                    delay_s, failures = self.reconnect_min_s, 0
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                was_connected = self.connected
                failures += 1
                self.last_error = self._describe(exc)
                level = logging.WARNING
                if was_connected:
                    pass
                elif failures & (failures - 1):  # not a power of two: stay quiet
                    level = logging.DEBUG
                elif _reason_code(exc) in _AUTH_CODES:
                    level = logging.ERROR
                log.log(
                    level,
                    "mqtt: %s; retrying in %.1f s (attempt %d)",
                    self.last_error,
                    delay_s,
                    failures,
                )
            except Exception as exc:  # a bug must not silently end publishing for good
                failures += 1
                self.last_error = f"internal error: {exc!r}"
                log.exception("mqtt: unexpected error; reconnecting in %.1f s", delay_s)
            finally:
                self.connected = False
            await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, self.reconnect_max_s)

    def _describe(self, exc: aiomqtt.MqttError) -> str:
        where = f"broker {self.host}:{self.port}"
        if _reason_code(exc) in _AUTH_CODES:
            return (
                f"{where} refused user {self.username!r} ({exc}); check mqtt.username and "
                "mqtt.password and the broker's ACL"
            )
        if self.connected:
            return f"lost connection to {where} ({exc})"
        return f"cannot connect to {where} ({exc}); is the broker running and reachable?"

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send retained state, then queued messages, until the connection fails."""
        await client.publish(
            self.daemon_topic,
            self._daemon_status("online"),
            qos=1,
            retain=True,
            properties=self._props,
        )
        for topic in self._retained:
            self._dirty.setdefault(topic, None)
        watcher = asyncio.get_running_loop().create_task(self._watch(client))
        try:
            while True:
                if watcher.done():
                    watcher.result()  # raises the disconnect error
                    raise aiomqtt.MqttError("disconnected")
                if self._dirty:
                    topic = next(iter(self._dirty))
                    del self._dirty[topic]
                    try:
                        await self._send(client, topic, self._retained[topic][1], retain=True)
                    except BaseException:
                        self._dirty.setdefault(topic, None)
                        raise
                    if topic in self._forget_after_send and topic not in self._dirty:
                        self._forget_after_send.discard(topic)
                        self._retained.pop(topic, None)
                elif len(self._queue):
                    item, is_estimate = self._queue.take()
                    try:
                        await self._send(client, item[1], item[2], retain=False)
                    except BaseException:
                        for lost in self._queue.put_back(item, estimate=is_estimate):
                            self.stats.lose(lost[0])
                        raise
                else:
                    self._drained.set()
                    waiter = asyncio.get_running_loop().create_task(self._queue.wait())
                    try:
                        await asyncio.wait([waiter, watcher], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])

    async def _send(
        self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool
    ) -> None:
        await client.publish(topic, payload, qos=self.qos, retain=retain, properties=self._props)
        self.stats.published += 1

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Return or raise when the connection ends (aiomqtt's message iterator
        raises ``MqttError`` on disconnect; nothing is subscribed)."""
        async for _ in client.messages:
            pass

    def health(self) -> dict[str, Any]:
        """Counters and connection state (for ``/healthz``)."""
        return {
            **self.stats.as_dict(),
            "connected": self.connected,
            "connects": self.connects,
            "queued": len(self._queue),
            "retained_pending": len(self._dirty),
            "last_error": self.last_error,
        }
