"""The robot client's connections: the broker, the daemon's WebSocket, rosbridge.

Each is an async context manager whose background task connects and
reconnects forever (jittered exponential back-off) and never raises because
the other side went away: it reports events with ``on_event(event,
replayed)`` and lost connections with ``on_outage()``, both non-blocking.
``replayed`` marks what a (re)connection hands over to say where things
stand (MQTT retained messages, the WebSocket hello), as opposed to live events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any

from clients.robot.config import MqttConnection, RosConnection
from dropformer.errors import ConfigError
from streamer.access import token_from_env
from streamer.core.jsonguard import MessageError, loads_object
from streamer.publishers.base import DropOldestQueue

log = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any], bool], None]
OnOutage = Callable[[], None]


class Backoff:
    """Jittered exponential back-off between ``min_s`` and ``max_s``."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.delay_s = min_s
        self.failures = 0

    def reset(self) -> None:
        self.delay_s, self.failures = self.min_s, 0

    async def wait(self) -> None:
        self.failures += 1
        await asyncio.sleep(self.delay_s * random.uniform(0.5, 1.0))
        self.delay_s = min(self.delay_s * 2, self.max_s)


MAX_MESSAGE_BYTES = 1 << 22
"""Largest message read from the broker or the daemon (a hello with many streams is the largest)."""


def parse_message(raw: str | bytes, where: str) -> dict[str, Any] | None:
    """A received message as a JSON object, bounded before parsing; ``None`` (logged) when it
    is too large, nested too deep, not JSON or not an object."""
    try:
        return loads_object(raw, max_bytes=MAX_MESSAGE_BYTES, what=f"{where} message")
    except MessageError as exc:
        log.warning("%s: ignoring a message: %s: %.80r", where, exc, raw)
        return None


class _Task:
    """Runs ``self._run()`` in the background between ``__aenter__`` and ``__aexit__``."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=type(self).__name__)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


class MqttLink(_Task):
    """One MQTT connection: subscribes to the daemon's topics (``subscribe=True``) and
    publishes the robot's commands (:meth:`publish`, buffered while the broker is away:
    ``max_queue`` commands, the oldest dropped and counted in ``dropped``)."""

    def __init__(
        self, conn: MqttConnection, *, subscribe: bool, on_event: OnEvent, on_outage: OnOutage,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.conn, self.subscribe = conn, subscribe
        self.on_event, self.on_outage = on_event, on_outage
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self.timeout_s = timeout_s
        self.prefix = conn.prefix.strip("/")
        self.outbox: DropOldestQueue[tuple[str, bytes, int, bool]] = DropOldestQueue(conn.max_queue)
        self.connected = False
        self.subscribed = False  # (input) subscribed on the current connection
        self.connects = 0
        self.published = 0
        self.dropped = 0
        self.last_error: str | None = None

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Queue a command; never blocks."""
        if self.outbox.put((topic, payload, qos, retain)):
            self.dropped += 1
            log.warning("mqtt: broker away; dropped the oldest command (%d so far)", self.dropped)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for _ in range(40):  # up to 2 s to hand over the commands still queued
            if not len(self.outbox) or not self.connected:
                break
            await asyncio.sleep(0.05)
        await super().__aexit__(exc_type, exc, tb)
        left = len(self.outbox.drain())
        if left:
            self.dropped += left
            log.warning("mqtt: stopped with %d command(s) undelivered", left)

    def _client(self) -> Any:
        import aiomqtt

        tls = self.conn.tls
        return aiomqtt.Client(
            self.conn.host, self.conn.port, username=self.conn.username, password=self.conn.secret(),
            identifier=self.conn.client_id, protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.conn.keepalive_s, timeout=self.timeout_s,
            tls_params=aiomqtt.TLSParameters(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
            if tls is not None else None,
            tls_insecure=tls.insecure if tls is not None else None,
        )  # fmt: skip

    async def _run(self) -> None:
        import aiomqtt

        where = f"broker {self.conn.host}:{self.conn.port}"
        while True:
            try:
                async with self._client() as client:
                    self.connected, self.last_error = True, None
                    self.connects += 1
                    log.info(
                        "mqtt: connected to %s%s", where, " (again)" if self.connects > 1 else ""
                    )
                    self.backoff.reset()
                    if self.subscribe:
                        topics = [
                            f"{self.prefix}/+/{kind}" for kind in ("estimate", "state", "status")
                        ]
                        await client.subscribe([(t, 1) for t in topics])
                        self.subscribed = True
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self.last_error = f"{where}: {exc}"
                level = (
                    logging.WARNING
                    if self.connected or self.backoff.failures in (0, 1, 4, 16)
                    else logging.DEBUG
                )
                log.log(level, "mqtt: %s; reconnecting (is the broker running? check mqtt.host/port/username)",
                        self.last_error)  # fmt: skip
                if self.connected and self.subscribe:
                    self.on_outage()  # events may be missed until the next connection
            except Exception:  # a bug must not end the link for good
                self.last_error = "internal error"
                log.exception("mqtt: unexpected error; reconnecting")
                if self.subscribe:
                    self.on_outage()
            finally:
                self.connected = self.subscribed = False
            await self.backoff.wait()

    async def _serve(self, client: Any) -> None:
        from aiomqtt import MqttError

        reader = asyncio.get_running_loop().create_task(self._read(client))
        try:
            while True:
                waiter = asyncio.get_running_loop().create_task(self.outbox.wait())
                try:
                    await asyncio.wait([waiter, reader], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if reader.done():
                    reader.result()  # raises the disconnect error
                    raise MqttError("disconnected")
                while len(self.outbox):
                    item = self.outbox.get_nowait()
                    try:
                        await client.publish(item[0], item[1], qos=item[2], retain=item[3])
                    except BaseException:
                        if self.outbox.put_front(item):
                            self.dropped += 1
                        raise
                    self.published += 1
        finally:
            reader.cancel()
            await asyncio.wait([reader])

    async def _read(self, client: Any) -> None:
        async for m in client.messages:
            if not self.subscribe or not m.payload:
                continue  # an emptied retained topic
            doc = parse_message(m.payload, "mqtt")
            if doc is not None:
                self.on_event(doc, bool(m.retain))


class WebSocketLink(_Task):
    """The daemon's event WebSocket: the hello says where things stand (replayed), then live events."""

    def __init__(
        self, url: str, *, on_event: OnEvent, on_outage: OnOutage, open_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, token: str | None = None,
    ) -> None:  # fmt: skip
        self.url = url
        self.token = token
        self.on_event, self.on_outage = on_event, on_outage
        self.open_timeout_s = open_timeout_s
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        while True:
            try:
                token = self.token or token_from_env()
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout_s,
                    max_size=MAX_MESSAGE_BYTES,
                    additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                ) as ws:
                    self.connected, self.last_error = True, None
                    self.connects += 1
                    log.info(
                        "websocket: connected to %s%s",
                        self.url,
                        " (again)" if self.connects > 1 else "",
                    )
                    self.backoff.reset()
                    async for raw in ws:
                        doc = parse_message(raw, "websocket")
                        if doc is None:
                            continue
                        if doc.get("type") == "hello":
                            self._hello(doc)
                        elif isinstance(doc.get("type"), str) and doc["type"] not in (
                            "subscribed",
                            "error",
                        ):
                            self.on_event(doc, False)
                reason = "the daemon closed the connection"
            except InvalidURI as exc:
                raise ConfigError(f"input.url {self.url!r} is not a WebSocket URL ({exc})") from exc
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug must not end the link for good
                log.exception("websocket: unexpected error")
                reason = f"internal error: {exc!r}"
            self.last_error = reason
            if self.connected:
                self.on_outage()
            level = (
                logging.WARNING
                if self.connected or self.backoff.failures in (0, 1, 4, 16)
                else logging.DEBUG
            )
            log.log(level, "websocket: %s (%s); reconnecting", reason, self.url)
            self.connected = False
            await self.backoff.wait()

    def _hello(self, hello: dict[str, Any]) -> None:
        """Where things stand: statuses, each stream's last transitions (oldest first), last estimates."""

        def part(key: str) -> dict[str, Any]:  # a malformed part is left out, not a crash
            value = hello.get(key)
            return value if isinstance(value, dict) else {}

        for status in part("last_status").values():
            self.on_event(status, True)
        for transitions in part("transitions").values():
            for tr in transitions if isinstance(transitions, list) else []:
                self.on_event(tr, True)
        for est in part("last_estimate").values():
            self.on_event(est, True)


class RosLink:
    """A rosbridge connection through roslibpy (its asyncio transport, which reconnects by itself)."""

    def __init__(self, conn: RosConnection) -> None:
        self.conn = conn
        self.ros: Any = None
        self.connects = 0
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return bool(self.ros is not None and self.ros.is_connected)

    async def wait_connected(self) -> None:
        """Return once rosbridge is connected."""
        while not self.connected:
            self._ready.clear()
            if self.connected:
                break
            await self._ready.wait()

    async def __aenter__(self) -> RosLink:
        try:
            import roslibpy
            from roslibpy.comm.comm_asyncio import AsyncioRosBridgeClientFactory
        except ImportError as exc:
            raise ConfigError(
                "ros actions need roslibpy: pip install 'emotion-monitor[robot]' (or remove the ros actions)"
            ) from exc
        AsyncioRosBridgeClientFactory.set_initial_delay(self.conn.reconnect_min_s)
        AsyncioRosBridgeClientFactory.set_max_delay(self.conn.reconnect_max_s)
        # Connects in roslibpy's own background loop; never blocks this one.
        self.ros = roslibpy.Ros(
            self.conn.host, self.conn.port, is_secure=self.conn.secure, transport="asyncio"
        )
        loop = asyncio.get_running_loop()

        def wake() -> None:  # from roslibpy's thread
            with contextlib.suppress(RuntimeError):  # our loop has closed: nobody waits
                loop.call_soon_threadsafe(self._ready.set)

        def on_ready(_proto: Any) -> None:
            self.connects += 1
            log.info("ros: connected to rosbridge at %s:%d", self.conn.host, self.conn.port)
            wake()

        def on_close(_proto: Any) -> None:
            log.warning(
                "ros: lost rosbridge at %s:%d; reconnecting", self.conn.host, self.conn.port
            )
            wake()  # waiters look again

        self.ros.on("ready", on_ready)
        self.ros.on("close", on_close)
        log.info("ros: connecting to rosbridge at %s:%d", self.conn.host, self.conn.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ros, self.ros = self.ros, None
        if ros is not None:

            def close() -> None:
                try:
                    ros.close(2)
                except Exception as err:  # a rosbridge that is gone cannot say goodbye
                    log.debug("ros: close: %s", err)

            await asyncio.to_thread(close)
