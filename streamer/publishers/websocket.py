"""WebSocket server: live events for dashboards and any client, plus the
dashboard's static files and ``GET /healthz`` on the same port.

Protocol on ``path`` (default ``/ws``):

* on connect the server sends ``{"type": "hello", "v": 1, "streams": [...],
  "last_status": {sid: status event}, "last_estimate": {sid: estimate},
  "transitions": {sid: [its last transitions, oldest first]},
  "utterances": {sid: [its last utterances, oldest first]}}`` and, when
  estimates carry token importance, ``"last_importance": {sid: the last
  estimate that had it}``;
* then every event as one JSON text message;
* a client may choose streams with ``?streams=a,b`` in the URL, or at any time
  by sending ``{"type": "subscribe", "streams": ["a", "b"]}`` (``null`` or
  ``"*"`` means all); the server answers ``{"type": "subscribed", ...}``.
  Events without a ``stream_id`` go to every client.

Messages from clients are bounded before they are parsed
(:mod:`streamer.core.control`): one larger than ``max_control_bytes`` closes
the connection with 1009, one nested too deep with 1008, one that is not
JSON with 1007; a JSON object other than a subscribe gets an ``error`` reply.

Access (:mod:`streamer.access`): every request passes the ``Host`` check,
every WebSocket handshake the ``Origin`` check and the connection limits, and
``path`` needs the token when one is configured. ``/healthz`` shows client
addresses only to a request that presents the token.

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
from streamer.access import AccessPolicy, Refusal, select_subprotocol
from streamer.config import WebSocketConfig
from streamer.core.control import ControlError, parse_control
from streamer.core.jsonguard import MessageError
from streamer.hub import StreamSnapshot
from streamer.publishers.base import (
    DropOldestQueue,
    Message,
    PublisherStats,
    encode_json,
    should_log,
)
from streamer.publishers.http import HEAD_TIMEOUT_S, PostExchange, PostRoute

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CLOSE_TRY_AGAIN_LATER = 1013
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
}


@dataclass(eq=False)
class _Client:
    conn: ServerConnection
    queue: DropOldestQueue[tuple[str | None, str]]  # (stream id, text)
    streams: frozenset[str] | None = None  # None: every stream
    dropped: int = 0
    sent: int = 0
    full_since: float | None = None
    closing: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def wants(self, stream_id: str | None) -> bool:
        return self.streams is None or stream_id is None or stream_id in self.streams

    @property
    def remote(self) -> str:
        addr = self.conn.remote_address
        return f"{addr[0]}:{addr[1]}" if addr else "?"

    def info(self, *, with_address: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {"remote": self.remote} if with_address else {}
        doc.update(
            {
                "streams": sorted(self.streams) if self.streams is not None else None,
                "queued": len(self.queue),
                "sent": self.sent,
                "dropped": self.dropped,
            }
        )
        return doc


def _address(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return str(addr[0]) if addr else "?"


class _PortConnection(ServerConnection):
    """A connection on the port. It waits for the first bytes: a ``POST`` to a route of
    :meth:`WebSocketPublisher.add_post_route` is answered by a :class:`PostExchange`;
    anything else (a WebSocket handshake, a GET) goes to websockets unchanged."""

    publisher: WebSocketPublisher  # set on the subclass each server makes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._pending: asyncio.BaseTransport | None = transport
        self._first = b""
        self._post: PostExchange | None = None
        self._sniff_timer: asyncio.TimerHandle | None = self.loop.call_later(
            HEAD_TIMEOUT_S,
            transport.close,  # said nothing that tells what it is
        )

    def _decide(self, data: bytes) -> None:
        transport, self._pending = self._pending, None
        assert transport is not None
        if self._sniff_timer is not None:
            self._sniff_timer.cancel()
            self._sniff_timer = None
        if PostExchange.wants(data) and self.publisher._post_routes:
            self._post = self.publisher._start_post(transport)  # type: ignore[arg-type]
            self._post.feed(data)
            return
        super().connection_made(transport)
        super().data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._post is not None:
            self._post.feed(data)
        elif self._pending is None:
            super().data_received(data)
        else:
            self._first += data
            if PostExchange.wants(self._first) is not None:
                first, self._first = self._first, b""
                self._decide(first)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self._post is not None:
            self._post.eof()
            return True  # the answer may still be written
        if self._pending is not None:
            return None  # closed before saying anything
        super().eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._post is not None:
            self._post.lost()
            return
        if self._pending is not None:
            if self._sniff_timer is not None:
                self._sniff_timer.cancel()
            self._pending = None
            return
        super().connection_lost(exc)


@dataclass(frozen=True)
class _Route:
    handler: Callable[[ServerConnection], Awaitable[None]]
    needs_token: bool


class WebSocketPublisher:
    """Serve events over WebSocket; see the module docstring for the protocol.

    Args:
        cfg: the ``publish.websocket`` section (host, port, path, queues, importance).
        access: who may connect (default: no token, loopback names, default limits).
        static_dir: folder served over plain HTTP on the same port (``/`` ->
            ``index.html``); ``None`` serves no files.
        snapshot: callable giving ``{"streams", "last_status", "last_estimate"}``
            for the hello (e.g. ``hub.snapshot``); by default the publisher keeps
            its own from the messages it sees.
        health: optional callable whose dict is merged into ``/healthz``.
        close_timeout_s: how long a close handshake may take before the TCP
            connection is dropped.
    """

    def __init__(
        self,
        cfg: WebSocketConfig | None = None,
        *,
        access: AccessPolicy | None = None,
        static_dir: str | Path | None = None,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        close_timeout_s: float = 2.0,
        write_limit_bytes: int = 32 * 1024,
    ) -> None:
        cfg = cfg or WebSocketConfig()
        self.cfg = cfg
        self.host, self.port, self.path = cfg.host, cfg.port, cfg.path
        self.access = access or AccessPolicy(bind_host=cfg.host)
        self.static_dir = Path(static_dir).resolve() if static_dir is not None else None
        if self.static_dir is not None and not self.static_dir.is_dir():
            raise ConfigError(f"static_dir {str(static_dir)!r} is not a folder")
        self.max_queue = cfg.max_queue
        self.slow_client_timeout_s = cfg.slow_client_timeout_s
        self.close_timeout_s = close_timeout_s
        self.write_limit_bytes = write_limit_bytes
        self.importance = cfg.importance
        self.stats = PublisherStats()
        self.slow_clients_closed = 0
        self.connections_total = 0
        self.refused: dict[int, int] = {}  # HTTP status -> requests refused by the access rules
        self.control_errors: dict[str, int] = {}  # code -> client messages refused
        self._own_state: StreamSnapshot | None = None  # kept only when no snapshot is given
        if snapshot is None:
            self._own_state = StreamSnapshot()
            snapshot = self._own_state.as_dict
        self._snapshot = snapshot
        self._routes: dict[str, _Route] = {}
        self._post_routes: dict[str, PostRoute] = {}
        self._posts: set[asyncio.Task[None]] = set()
        self.posts_answered: dict[int, int] = {}  # HTTP status -> POST requests answered
        # Frames up to this size reach the handlers, which check their own (smaller) limits
        # and answer with their own message; larger ones websockets closes with 1009.
        self._max_message_bytes = max(64 * 1024, cfg.max_control_bytes + 1)
        self._health = health
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> WebSocketPublisher:
        connection = type("PortConnection", (_PortConnection,), {"publisher": self})
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                create_connection=connection,
                process_request=self._process_request,
                select_subprotocol=lambda _conn, offered: select_subprotocol(offered),
                max_size=self._max_message_bytes,
                write_limit=self.write_limit_bytes,
                close_timeout=self.close_timeout_s,
            )
        except OSError as exc:
            raise ConfigError(
                f"publish.websocket.port {self.port} on {self.host} cannot be opened ({exc}); "
                "pick a free port or 0 for any"
            ) from exc
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        log.info(
            "websocket: serving ws://%s:%d%s%s",
            self.host,
            self.port,
            self.path,
            f" and files from {self.static_dir}" if self.static_dir else "",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        for post in list(self._posts):  # uploads in progress end with the server
            post.cancel()
        await asyncio.gather(*self._posts, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add_route(
        self,
        path: str,
        handler: Callable[[ServerConnection], Awaitable[None]],
        *,
        max_message_bytes: int = 64 * 1024,
        needs_token: bool = False,
    ) -> None:
        """Serve another WebSocket endpoint at ``path``; ``handler(conn)`` owns the connection.

        Call before the server starts. The server accepts messages up to the
        largest ``max_message_bytes`` of all routes (+1, so that a handler can
        refuse one over its own limit with its own message); handlers check
        their own limits. ``needs_token``: refuse a handshake without the token
        (401); otherwise the handler checks it (the ingest protocols do).
        """
        if self._server is not None:
            raise RuntimeError("add_route must be called before the server starts")
        if path == self.path or path == "/healthz" or path in self._routes:
            raise ConfigError(f"WebSocket path {path!r} is already served; choose another")
        self._routes[path] = _Route(handler, needs_token)
        self._max_message_bytes = max(self._max_message_bytes, max_message_bytes + 1)

    def add_post_route(self, path: str, route: PostRoute) -> None:
        """Answer ``POST path`` with ``route`` (see :mod:`streamer.publishers.http`)."""
        if (
            path == self.path
            or path == "/healthz"
            or path in self._routes
            or path in self._post_routes
        ):
            raise ConfigError(f"path {path!r} is already served; choose another")
        self._post_routes[path] = route

    def _start_post(self, transport: asyncio.Transport) -> PostExchange:
        peer = transport.get_extra_info("peername")
        exchange = PostExchange(
            transport,
            self._post_routes,
            self.access,
            f"{peer[0]}:{peer[1]}" if peer else "?",
            answered=self.posts_answered,
        )
        task = asyncio.get_running_loop().create_task(exchange.run())
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)
        return exchange

    def forget(self, stream_id: str) -> None:
        """Drop what the publisher remembers of an ended stream."""
        if self._own_state is not None:
            self._own_state.forget(stream_id)
        self.stats.forget(stream_id)

    @property
    def url(self) -> str:
        """``ws://host:port/path`` of the running server."""
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def clients(self) -> list[dict[str, Any]]:
        """Per-client counters: remote address, streams, queued, sent, dropped."""
        return self.client_info(with_address=True)

    def client_info(self, *, with_address: bool) -> list[dict[str, Any]]:
        """Per-client counters, with each client's address or without."""
        return [c.info(with_address=with_address) for c in self._clients]

    # -- publishing --------------------------------------------------------
    def publish(self, message: Message) -> None:
        """Queue ``message`` for every interested client; never blocks."""
        if self._own_state is not None:
            self._own_state.update(message.event)
        text = message.text_for(self.importance)
        self.stats.published += 1
        sid = message.stream_id
        self.stats.track(sid)
        now = asyncio.get_running_loop().time() if self._clients else 0.0
        for client in list(self._clients):
            if client.closing or not client.wants(sid):
                continue
            self._enqueue(client, (sid, text), now)

    def _enqueue(self, client: _Client, item: tuple[str | None, str], now: float) -> None:
        dropped = client.queue.push(item)
        if dropped is not None:
            client.dropped += 1
            self.stats.lose(dropped[0])
            if client.dropped in (1, 100) or client.dropped % 10000 == 0:
                log.warning(
                    "websocket: client %s is slow; dropped %d message(s) for it "
                    "(%d for all clients so far)",
                    client.remote,
                    client.dropped,
                    self.stats.dropped,
                )
        if not client.queue.full():
            client.full_since = None
        elif client.full_since is None:
            client.full_since = now
        elif now - client.full_since > self.slow_client_timeout_s:
            self._close_slow(client)

    def _close_slow(self, client: _Client) -> None:
        client.closing = True
        for sid, _ in client.queue.drain():
            client.dropped += 1
            self.stats.lose(sid)
        self.slow_clients_closed += 1
        log.warning(
            "websocket: closing client %s: its queue stayed full for over %.1f s "
            "(%d message(s) dropped for it)",
            client.remote,
            self.slow_client_timeout_s,
            client.dropped,
        )
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
            await route.handler(conn)
            return
        query = parse_qs(urlsplit(conn.request.path).query)
        streams: frozenset[str] | None = None
        if "streams" in query:
            names = {s for v in query["streams"] for s in v.split(",") if s}
            streams = None if "*" in names else frozenset(names)
        client = _Client(conn, DropOldestQueue(self.max_queue), streams)
        self._clients.add(client)
        self.connections_total += 1
        self._reply(client, self._hello())
        sender = asyncio.get_running_loop().create_task(self._send_loop(client))
        client.tasks.add(sender)
        try:
            async for raw in conn:
                refused = self._on_message(client, raw)
                if refused is not None:
                    reason = refused.message.encode("utf-8")[:120].decode("utf-8", "ignore")
                    await conn.close(refused.close_code, reason)
                    break
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
            "type": "hello",
            "v": PROTOCOL_VERSION,
            "streams": snap.get("streams", []),
            "last_status": snap.get("last_status", {}),
            "last_estimate": last
            if self.importance
            else {
                sid: {k: v for k, v in est.items() if k != "importance"}
                for sid, est in last.items()
            },
            "transitions": snap.get("transitions", {}),
            "utterances": snap.get("utterances", {}),
        }
        if self.importance:
            hello["last_importance"] = snap.get("last_importance", {})
        return hello

    async def _send_loop(self, client: _Client) -> None:
        try:
            while True:
                await client.queue.wait()
                while len(client.queue):
                    await client.conn.send(client.queue.get_nowait()[1])
                    client.sent += 1
                client.full_since = None
        except ConnectionClosed:
            return

    def _on_message(self, client: _Client, raw: str | bytes) -> MessageError | None:
        """Apply a client's message; returns the error to close the connection with, if fatal."""
        try:
            sub = parse_control(raw, max_bytes=self.cfg.max_control_bytes)
        except ControlError as exc:
            self.control_errors[exc.code] = self.control_errors.get(exc.code, 0) + 1
            self._reply(client, {"type": "error", "v": PROTOCOL_VERSION, "message": exc.message})
            return None
        except MessageError as exc:
            self.control_errors[exc.code] = self.control_errors.get(exc.code, 0) + 1
            if should_log(self.control_errors[exc.code]):
                log.warning(
                    "websocket: closing client %s: %s (%d such so far)",
                    client.remote,
                    exc.message,
                    self.control_errors[exc.code],
                )
            return exc
        client.streams = sub.streams
        self._reply(
            client,
            {
                "type": "subscribed",
                "v": PROTOCOL_VERSION,
                "streams": sorted(client.streams) if client.streams is not None else None,
            },
        )
        return None

    def _reply(self, client: _Client, doc: dict[str, Any]) -> None:
        """Queue the server's own message for one client (what it pushes out is counted)."""
        dropped = client.queue.push((None, encode_json(doc)))
        if dropped is not None:
            client.dropped += 1
            self.stats.lose(dropped[0])

    # -- plain HTTP --------------------------------------------------------
    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        route = self._routes.get(path)
        websocket = path == self.path or route is not None
        from_address = total = 0
        if websocket and self._server is not None:
            address = _address(conn)
            others = [c for c in self._server.all_connections if c is not conn]  # open or opening
            total = len(others)
            from_address = sum(1 for c in others if _address(c) == address)
        refusal = self.access.check(
            request.path,
            request.headers,
            websocket=websocket,
            needs_token=path == self.path or (route is not None and route.needs_token),
            open_from_address=from_address,
            open_total=total,
        )
        if refusal is not None:
            return self._refuse(conn, refusal)
        if websocket:
            return None  # WebSocket handshake
        if path in self._post_routes:
            response = self._response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                f"{path} takes POST requests (docs/analyze.md)\n".encode(),
                "text/plain; charset=utf-8",
            )
            response.headers["Allow"] = "POST"
            return response
        if path == "/healthz":
            authenticated = self.access.token is not None and self.access.authenticated(
                request.path, request.headers
            )
            body = encode_json(self.health(with_addresses=authenticated))
            return self._response(http.HTTPStatus.OK, body.encode(), "application/json")
        file = self._static_file(path)
        if file is None:
            return self._response(
                http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8"
            )
        ctype = _EXTRA_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0]
        ctype = ctype or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
            ctype += "; charset=utf-8"
        return self._response(http.HTTPStatus.OK, file.read_bytes(), ctype)

    def _refuse(self, conn: ServerConnection, refusal: Refusal) -> Response:
        n = self.refused[refusal.status] = self.refused.get(refusal.status, 0) + 1
        if should_log(n):
            log.warning(
                "websocket: refused %s with %d: %s (%d refused with %d so far)",
                _address(conn),
                refusal.status,
                refusal.reason,
                n,
                refusal.status,
            )
        return self._response(
            http.HTTPStatus(refusal.status),
            (refusal.reason + "\n").encode(),
            "text/plain; charset=utf-8",
        )

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
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", content_type),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        return Response(status.value, status.phrase, headers, body)

    def health(self, *, with_addresses: bool = False) -> dict[str, Any]:
        """The ``/healthz`` document: counters of this server and its clients (their
        addresses only ``with_addresses``: a request that presented the token)."""
        doc: dict[str, Any] = {
            "status": "ok",
            **self.stats.as_dict(),
            "clients": self.client_info(with_address=with_addresses),
            "connections_total": self.connections_total,
            "slow_clients_closed": self.slow_clients_closed,
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "access": {"token_required": self.access.token is not None},
            "control_errors": dict(self.control_errors),
        }
        if self._post_routes:
            doc["posts_answered"] = {str(k): v for k, v in sorted(self.posts_answered.items())}
        if self._health is not None:
            doc.update(self._health())
        return doc
