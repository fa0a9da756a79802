"""WebSocket server: live events for dashboards and any client, plus the
dashboard's static files and ``GET /healthz`` on the same port.

Protocol on ``path`` (default ``/ws``):

* on connect the server sends ``{"type": "hello", "v": 1, "streams": [...],
  "last_status": {sid: status event}, "last_estimate": {sid: estimate},
  "transitions": {sid: [its last transitions, oldest first]}}`` and, when
  estimates carry token importance, ``"last_importance": {sid: the last
  estimate that had it}``;
* then every event as one JSON text message;
* a client may choose streams with ``?streams=a,b`` in the URL, or at any time
  by sending ``{"type": "subscribe", "streams": ["a", "b"]}`` (``null`` or
  ``"*"`` means all); the server answers ``{"type": "subscribed", ...}``.
  Events without a ``stream_id`` go to every client.

Other WebSocket endpoints on the same port (network audio ingest) are added
with :meth:`WebSocketPublisher.add_route` before the server starts; each
route's handler owns its connections.

Slow clients: each client has its own bounded queue. When it is full the
OLDEST message is dropped and counted for that client; a client whose queue
stays full for longer than ``slow_client_timeout_s`` is closed with code 1013
(try again later). Memory per client is therefore bounded by ``max_queue``
messages plus the socket's ``write_limit``.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from dropformer.errors import ConfigError
from streamer.hub import StreamSnapshot, stream_id_of
from streamer.publishers.base import (
    DropOldestQueue,
    Event,
    PublisherStats,
    encode_or_count,
    without_importance,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CLOSE_TRY_AGAIN_LATER = 1013
_EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
                ".json": "application/json", ".svg": "image/svg+xml", ".wasm": "application/wasm"}


@dataclass(eq=False)
class _Client:
    conn: ServerConnection
    queue: DropOldestQueue[str]
    streams: set[str] | None = None  # None: every stream
    dropped: int = 0
    sent: int = 0
    full_since: float | None = None
    closing: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def wants(self, stream_id: str | None) -> bool:
        return self.streams is None or stream_id is None or stream_id in self.streams

    def info(self) -> dict[str, Any]:
        addr = self.conn.remote_address
        return {
            "remote": f"{addr[0]}:{addr[1]}" if addr else "?",
            "streams": sorted(self.streams) if self.streams is not None else None,
            "queued": len(self.queue), "sent": self.sent, "dropped": self.dropped,
        }


def _parse_streams(value: Any) -> set[str] | None:
    """``None``/``"*"`` -> all streams; a list of strings -> that set."""
    if value is None or value == "*":
        return None
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return set(value)
    raise ValueError('"streams" must be a list of stream ids, "*" or null')


class WebSocketPublisher:
    """Serve events over WebSocket; see the module docstring for the protocol.

    Args:
        host: interface to listen on (default loopback only: privacy by default).
        port: TCP port; 0 picks a free one (read :attr:`port` after start).
        path: the WebSocket endpoint.
        static_dir: folder served over plain HTTP on the same port (``/`` ->
            ``index.html``); ``None`` serves no files.
        max_queue: messages buffered per client before the oldest is dropped.
        slow_client_timeout_s: a client whose queue stays full this long is
            closed with code 1013.
        snapshot: callable giving ``{"streams", "last_status", "last_estimate"}``
            for the hello (e.g. ``hub.snapshot``); by default the publisher keeps
            its own from the events it sees.
        health: optional callable whose dict is merged into ``/healthz``.
        close_timeout_s: how long a close handshake may take before the TCP
            connection is dropped.
        importance: keep estimates' ``importance`` object (default True: the
            dashboard draws it); False leaves it out of events and the hello.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8765, path: str = "/ws",
        static_dir: str | Path | None = None, max_queue: int = 100, *,
        slow_client_timeout_s: float = 10.0,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        close_timeout_s: float = 2.0, write_limit_bytes: int = 32 * 1024, importance: bool = True,
    ) -> None:
        if not path.startswith("/"):
            raise ConfigError(f"websocket.path must start with '/', got {path!r}")
        if max_queue < 1:
            raise ConfigError(f"websocket.max_queue must be >= 1 message, got {max_queue!r}")
        if not slow_client_timeout_s > 0:
            raise ConfigError(f"websocket.slow_client_timeout_s must be > 0, got {slow_client_timeout_s!r}")
        self.host, self.port, self.path = host, port, path
        self.static_dir = Path(static_dir).resolve() if static_dir is not None else None
        if self.static_dir is not None and not self.static_dir.is_dir():
            raise ConfigError(f"websocket.static_dir {str(static_dir)!r} is not a folder; fix the path or unset it")
        self.max_queue = max_queue
        self.slow_client_timeout_s = slow_client_timeout_s
        self.close_timeout_s = close_timeout_s
        self.write_limit_bytes = write_limit_bytes
        self.importance = importance
        self.stats = PublisherStats()
        self.slow_clients_closed = 0
        self.connections_total = 0
        self._own_state: StreamSnapshot | None = None  # kept only when no snapshot is given
        if snapshot is None:
            self._own_state = StreamSnapshot()
            snapshot = self._own_state.as_dict
        self._snapshot = snapshot
        self._routes: dict[str, Callable[[ServerConnection], Awaitable[None]]] = {}
        self._max_message_bytes = 64 * 1024
        self._health = health
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> WebSocketPublisher:
        try:
            self._server = await serve(
                self._handle, self.host, self.port, process_request=self._process_request,
                max_size=self._max_message_bytes, write_limit=self.write_limit_bytes,
                close_timeout=self.close_timeout_s,
            )
        except OSError as exc:
            raise ConfigError(
                f"websocket.port {self.port} on {self.host} cannot be opened ({exc}); "
                "pick a free port or 0 for any"
            ) from exc
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        log.info("websocket: serving ws://%s:%d%s%s", self.host, self.port, self.path,
                 f" and files from {self.static_dir}" if self.static_dir else "")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add_route(
        self, path: str, handler: Callable[[ServerConnection], Awaitable[None]], *,
        max_message_bytes: int = 64 * 1024,
    ) -> None:
        """Serve another WebSocket endpoint at ``path``; ``handler(conn)`` owns the connection.

        Call before the server starts. The server accepts messages up to the
        largest ``max_message_bytes`` of all routes (+1, so that a handler can
        refuse one over its own limit with its own message); handlers check
        their own limits.
        """
        if self._server is not None:
            raise RuntimeError("add_route must be called before the server starts")
        if path == self.path or path == "/healthz" or path in self._routes:
            raise ConfigError(f"WebSocket path {path!r} is already served; choose another")
        self._routes[path] = handler
        self._max_message_bytes = max(self._max_message_bytes, max_message_bytes + 1)

    def forget(self, stream_id: str) -> None:
        """Drop what the publisher remembers of an ended stream."""
        if self._own_state is not None:
            self._own_state.forget(stream_id)

    @property
    def url(self) -> str:
        """``ws://host:port/path`` of the running server."""
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def clients(self) -> list[dict[str, Any]]:
        """Per-client counters: remote, streams, queued, sent, dropped."""
        return [c.info() for c in self._clients]

    # -- publishing --------------------------------------------------------
    def publish(self, event: Event) -> None:
        """Queue ``event`` for every interested client; never blocks."""
        if self._own_state is not None:
            self._own_state.update(event)
        if not self.importance:
            event = without_importance(event)
        message = encode_or_count(event, self.stats, "websocket")
        if message is None:
            return
        self.stats.published += 1
        sid = stream_id_of(event)
        now = asyncio.get_running_loop().time() if self._clients else 0.0
        for client in list(self._clients):
            if client.closing or not client.wants(sid):
                continue
            self._enqueue(client, message, now)

    def _enqueue(self, client: _Client, message: str, now: float) -> None:
        if client.queue.put(message):
            client.dropped += 1
            self.stats.dropped += 1
            if client.dropped in (1, 100) or client.dropped % 10000 == 0:
                log.warning("websocket: client %s is slow; dropped %d message(s) for it",
                            client.info()["remote"], client.dropped)
        if not client.queue.full():
            client.full_since = None
        elif client.full_since is None:
            client.full_since = now
        elif now - client.full_since > self.slow_client_timeout_s:
            self._close_slow(client)

    def _close_slow(self, client: _Client) -> None:
        client.closing = True
        client.queue.drain()
        self.slow_clients_closed += 1
        log.warning("websocket: closing client %s: its queue stayed full for over %.1f s "
                    "(%d message(s) dropped)", client.info()["remote"],
                    self.slow_client_timeout_s, client.dropped)
        for task in list(client.tasks):
            task.cancel()
        self._spawn(client.conn.close(CLOSE_TRY_AGAIN_LATER, "client too slow, reconnect"))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- connections -------------------------------------------------------
    async def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        route = self._routes.get(urlsplit(conn.request.path).path)
        if route is not None:
            await route(conn)
            return
        query = parse_qs(urlsplit(conn.request.path).query)
        streams: set[str] | None = None
        if "streams" in query:
            names = {s for v in query["streams"] for s in v.split(",") if s}
            streams = None if "*" in names else names
        client = _Client(conn, DropOldestQueue(self.max_queue), streams)
        self._clients.add(client)
        self.connections_total += 1
        client.queue.put(json.dumps(self._hello(), separators=(",", ":")))
        sender = asyncio.get_running_loop().create_task(self._send_loop(client))
        client.tasks.add(sender)
        try:
            async for raw in conn:
                self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            sender.cancel()
            await asyncio.wait([sender])

    def _hello(self) -> dict[str, Any]:
        snap = self._snapshot()
        last = snap.get("last_estimate", {})
        hello = {
            "type": "hello", "v": PROTOCOL_VERSION, "streams": snap.get("streams", []),
            "last_status": snap.get("last_status", {}),
            "last_estimate": last if self.importance else {k: without_importance(v) for k, v in last.items()},
            "transitions": snap.get("transitions", {}),
        }
        if self.importance:
            hello["last_importance"] = snap.get("last_importance", {})
        return hello

    async def _send_loop(self, client: _Client) -> None:
        try:
            while True:
                await client.queue.wait()
                while len(client.queue):
                    await client.conn.send(client.queue.get_nowait())
                    client.sent += 1
                client.full_since = None
        except ConnectionClosed:
            return

    def _on_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
            if not isinstance(msg, dict) or msg.get("type") != "subscribe":
                raise ValueError('only {"type": "subscribe", "streams": [...]} is understood')
            client.streams = _parse_streams(msg.get("streams"))
        except ValueError as exc:
            client.queue.put(json.dumps({"type": "error", "v": PROTOCOL_VERSION, "message": str(exc)}))
            return
        client.queue.put(json.dumps({
            "type": "subscribed", "v": PROTOCOL_VERSION,
            "streams": sorted(client.streams) if client.streams is not None else None,
        }))

    # -- plain HTTP --------------------------------------------------------
    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == self.path or path in self._routes:
            return None  # WebSocket handshake
        if path == "/healthz":
            return self._response(http.HTTPStatus.OK, json.dumps(self.health()).encode(),
                                  "application/json")
        file = self._static_file(path)
        if file is None:
            return self._response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        ctype = _EXTRA_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0]
        ctype = ctype or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
            ctype += "; charset=utf-8"
        return self._response(http.HTTPStatus.OK, file.read_bytes(), ctype)

    def _static_file(self, url_path: str) -> Path | None:
        """The file under ``static_dir`` for ``url_path``; ``None`` if absent or outside."""
        if self.static_dir is None:
            return None
        rel = unquote(url_path)
        if "\x00" in rel or "\\" in rel:
            return None
        if rel.endswith("/"):
            rel += "index.html"
        candidate = (self.static_dir / rel.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.static_dir) or not candidate.is_file():
            return None
        return candidate

    @staticmethod
    def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
        headers = Headers([
            ("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
            ("Content-Length", str(len(body))), ("Content-Type", content_type),
            ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
        ])
        return Response(status.value, status.phrase, headers, body)

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document: counters of this server and its clients."""
        doc: dict[str, Any] = {
            "status": "ok", **self.stats.as_dict(), "clients": self.clients,
            "connections_total": self.connections_total,
            "slow_clients_closed": self.slow_clients_closed,
        }
        if self._health is not None:
            doc.update(self._health())
        return doc
