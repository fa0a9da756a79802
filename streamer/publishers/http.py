"""Plain HTTP ``POST`` requests on the WebSocket server's port (``POST /v1/analyze``).

websockets answers GET requests (handshakes, the dashboard's files, ``/healthz``) but
reads no request bodies. The server's connections therefore look at the first bytes a
client sends (:class:`PostExchange.wants`): a request that starts with ``POST `` is
answered here, everything else goes to websockets unchanged.

One request per connection (the answer says ``Connection: close``). In order, before
any of the body is kept: the request head must arrive within ``HEAD_TIMEOUT_S`` and be
at most ``MAX_HEAD_BYTES`` (408, 431); the :class:`~streamer.access.AccessPolicy` checks
as for every request (``Host`` 403, a browser's ``Origin`` 403, the token 401); the path
must be a registered route (404); the body needs a ``Content-Length`` (411, chunked
bodies are refused) within the route's ``max_body_bytes`` (413). Then the route's
handler decides (its own 415/429 and so on) and reads the body when it wants it
(:meth:`HttpRequest.read_body`; ``Expect: 100-continue`` is answered then); the whole
request must have arrived within the route's ``timeout_s`` (408). After a refusal the
rest of an upload is read and dropped for up to ``LINGER_S`` so that the client sees
the answer rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import http.client
import io
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.http11 import Response

from streamer.access import AccessPolicy

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
LINGER_S = 2.0
EARLY_BODY_BYTES = 64 * 1024


class RequestTimeout(Exception):
    """The body did not arrive in time (answered 408)."""


@dataclass(frozen=True)
class HttpAnswer:
    """What a handler answers: status, body and its type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpAnswer:
        return cls(status, json.dumps(doc, allow_nan=False).encode("utf-8"), headers=headers)

    @classmethod
    def error(
        cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> HttpAnswer:
        """``{"error": message, "status": status}``."""
        return cls.json(status, {"error": message, "status": status}, headers)

    def serialize(self) -> bytes:
        hdrs = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Length", str(len(self.body))),
                ("Content-Type", self.content_type),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                *self.headers,
            ]
        )
        phrase = http.HTTPStatus(self.status).phrase
        return Response(self.status, phrase, hdrs, self.body).serialize()


@dataclass(frozen=True)
class HttpRequest:
    """A POST that passed the access checks and the size limit."""

    path: str
    """The request target, with its query."""
    headers: Headers
    peer: str
    content_length: int
    read_body: Callable[[], Awaitable[bytes]]
    """The whole body (waits for it; raises :class:`RequestTimeout` when it is late)."""

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (the last value of each)."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters ('' when absent)."""
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


PostHandler = Callable[[HttpRequest], Awaitable[HttpAnswer]]


@dataclass(frozen=True)
class PostRoute:
    handler: PostHandler
    max_body_bytes: int
    timeout_s: float
    limit_key: str = "max_body_bytes"
    """The config key that sets ``max_body_bytes`` (named in the 413 answer)."""


@dataclass
class PostExchange:
    """One connection's POST request: fed the bytes the connection receives, answers it."""

    transport: asyncio.Transport
    routes: Mapping[str, PostRoute]
    access: AccessPolicy
    peer: str
    answered: dict[int, int] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=bytearray)
    _head: asyncio.Future[tuple[str, str, Headers]] | None = None
    _body: asyncio.Future[bytes] | None = None
    _phase: str = "head"  # head, wait (body not asked for yet), body, discard
    _expected: int = 0  # body bytes, once asked for
    _paused: bool = False
    _eof: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    @staticmethod
    def wants(first_bytes: bytes) -> bool | None:
        """Whether a connection that began with ``first_bytes`` is a POST (None: too few bytes)."""
        if len(first_bytes) < 5:
            return None if b"POST ".startswith(first_bytes) else False
        return first_bytes.startswith(b"POST ")

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self._body = loop.create_future()

    # -- bytes in (the connection calls these) ------------------------------------------
    def feed(self, data: bytes) -> None:
        assert self._head is not None and self._body is not None
        if self._phase == "discard":
            return
        self._buffer += data
        if self._phase == "head":
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._phase = "discard"
                    self._buffer = bytearray()
                    self._head.set_exception(ValueError("head too large"))
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._phase = "wait"
            try:
                self._head.set_result(_parse_head(head))
            except ValueError as exc:
                self._phase = "discard"
                self._buffer = bytearray()
                self._head.set_exception(exc)
                return
        if self._phase == "wait":
            if len(self._buffer) > EARLY_BODY_BYTES and not self._paused:
                self._paused = True  # back-pressure until the handler wants the body
                self.transport.pause_reading()
            return
        if self._phase == "body" and len(self._buffer) >= self._expected:
            body, self._buffer = bytes(self._buffer[: self._expected]), bytearray()
            self._phase = "discard"
            if not self._body.done():
                self._body.set_result(body)

    def _start_body(self, length: int) -> None:
        self._expected = length
        self._phase = "body"
        self.feed(b"")
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _discard(self) -> None:
        self._phase = "discard"
        self._buffer = bytearray()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def eof(self) -> None:
        self._eof.set()
        for fut in (self._head, self._body):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("the client closed the connection"))
                fut.add_done_callback(_retrieved)

    def lost(self) -> None:
        self._closed = True
        self.eof()

    # -- the exchange ---------------------------------------------------------------------
    async def run(self) -> None:
        """Answer the request, then close the connection."""
        try:
            answer = await self._answer()
        except asyncio.CancelledError:
            self.transport.abort()
            raise
        except ConnectionError:
            self.transport.abort()
            return
        except Exception:
            log.exception("POST from %s failed", self.peer)
            answer = HttpAnswer.error(500, "the server failed on this request; see its log")
        self.answered[answer.status] = self.answered.get(answer.status, 0) + 1
        if answer.status >= 400:
            log.info("POST from %s answered %d: %s", self.peer, answer.status, answer.body[:200])
        if self._closed:
            return
        self.transport.write(answer.serialize())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._discard()  # drop whatever else comes
        try:
            await asyncio.wait_for(self._eof.wait(), LINGER_S)
        except asyncio.TimeoutError:
            pass
        self.transport.close()

    async def _answer(self) -> HttpAnswer:
        assert self._head is not None
        try:
            method, target, headers = await asyncio.wait_for(
                asyncio.shield(self._head), HEAD_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            return HttpAnswer.error(
                408, f"the request head did not arrive within {HEAD_TIMEOUT_S:g} s"
            )
        except ValueError as exc:
            if str(exc) == "head too large":
                return HttpAnswer.error(
                    431, f"the request head is larger than {MAX_HEAD_BYTES} bytes"
                )
            return HttpAnswer.error(400, f"malformed request: {exc}")
        refusal = self.access.check(target, headers, websocket=False, needs_token=False)
        if refusal is None and not self.access.origin_allowed(
            headers.get("Origin"), headers.get("Host")
        ):
            refusal_text = (
                f"pages from {headers.get('Origin')!r} may not post here; "
                "add the origin to access.allowed_origins"
            )
            return HttpAnswer.error(403, refusal_text)
        if refusal is not None:
            return HttpAnswer.error(refusal.status, refusal.reason)
        path = urlsplit(target).path
        route = self.routes.get(path)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            return HttpAnswer.error(404, f"nothing to POST to at {path}; POST endpoints: {known}")
        if not self.access.authenticated(target, headers):
            return HttpAnswer.error(
                401,
                "missing or wrong token; send 'Authorization: Bearer <token>'",
                (("WWW-Authenticate", "Bearer"),),
            )
        if "Transfer-Encoding" in headers:
            return HttpAnswer.error(
                411, "chunked uploads are not accepted; send the body with a Content-Length"
            )
        raw_length = headers.get("Content-Length")
        if raw_length is None:
            return HttpAnswer.error(411, "the upload needs a Content-Length header")
        if not raw_length.strip().isdigit():
            return HttpAnswer.error(400, f"Content-Length {raw_length!r} is not a number of bytes")
        length = int(raw_length)
        if length > route.max_body_bytes:
            return HttpAnswer.error(
                413,
                f"the upload is {length} bytes; at most {route.max_body_bytes} are accepted "
                f"({route.limit_key})",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.timeout_s
        expect_continue = (headers.get("Expect") or "").lower() == "100-continue"

        async def read_body() -> bytes:
            assert self._body is not None
            if length == 0:
                return b""
            if self._phase == "wait":
                self._start_body(length)
                if expect_continue and not self._body.done():
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                return await asyncio.wait_for(
                    asyncio.shield(self._body), max(0.0, deadline - loop.time())
                )
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"the upload did not arrive within {route.timeout_s:g} s"
                ) from None

        # Bytes of the body that come before the handler asks for it wait in the buffer
        # (at most about EARLY_BODY_BYTES: then reading pauses).
        try:
            return await route.handler(HttpRequest(target, headers, self.peer, length, read_body))
        except RequestTimeout as exc:
            return HttpAnswer.error(408, str(exc))


def _parse_head(head: bytes) -> tuple[str, str, Headers]:
    """``(method, target, headers)`` of a request head (without the blank line)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"bad request line {line[:100]!r}")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
        message = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
        return method, target, Headers(list(message.items()))
    except (UnicodeDecodeError, http.client.HTTPException, InvalidHeader) as exc:
        raise ValueError(str(exc)) from exc


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (no one may be waiting for it any more)."""
    if not fut.cancelled():
        fut.exception()
