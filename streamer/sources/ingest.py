"""Audio over the network: the ``/ingest`` WebSocket endpoint and the source it feeds.

Each session (``docs/ingest.md``) becomes one stream, created at run time by
the daemon (:class:`StreamHost`) and analysed exactly like a configured one
(same windower, gate, worker, smoother and publishers). The protocol rules
live in the sans-I/O :class:`streamer.core.ingest.IngestProtocol`; this module
only moves bytes between the socket, that state machine and a
:class:`NetworkSource`.

Isolation: every failure of one session ends that session only. The handler
never raises into the WebSocket server; a stream that fails closes its own
socket with 1011.

Security: the WebSocket server checks ``Host`` and ``Origin`` at the handshake
(:mod:`streamer.access`: a page from another origin is refused with 403, so a
web page cannot feed audio into a monitor on the visitor's machine). When a
token is configured (``access.token``) every session must present it
(``Authorization: Bearer <token>``, the subprotocol ``bearer.<token>`` or
``?token=<token>``; compared in constant time), else it is closed with 4401.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from streamer.access import request_token as _request_token
from streamer.access import token_matches
from streamer.core.ingest import (
    CLOSE_NORMAL,
    Audio,
    IngestLimits,
    IngestProtocol,
    Problem,
    Start,
    Stop,
)
from streamer.core.twilio import TrackNames
from streamer.sources.base import OUTPUT_RATE_HZ, Frame, Source, SourceStats
from streamer.sources.resample import StreamResampler

if TYPE_CHECKING:
    from streamer.config import IngestConfig
    from streamer.publishers.websocket import WebSocketPublisher

log = logging.getLogger(__name__)

#: how long a finished session waits for its stream's last results before giving up
FLUSH_TIMEOUT_S = 15.0


class StreamHost(Protocol):
    """What runs network streams (the daemon)."""

    def open_network_stream(
        self, stream_id: str, source: Source, *, role: str | None = None
    ) -> asyncio.Task[dict[str, int]] | None:
        """Start analysing ``source`` as stream ``stream_id``; ``None`` when the id is in use.

        The task ends when the source ends (after the last results and the
        ``offline`` status are published and the stream's state is released)
        and returns the stream's final counters."""
        ...


class NetworkSource:
    """A :class:`~streamer.sources.base.Source` fed by a network session.

    The session calls :meth:`feed` with decoded audio at the client's rate;
    the stream task iterates 16 kHz mono frames. Between them a queue holds at
    most ``queue_s`` seconds of audio: when a slow consumer lets it fill, the
    OLDEST blocks are dropped and counted in ``stats.dropped_frames``. Blocks
    waiting together are resampled together (fewer, larger frames under load).
    Resampling is the microphone's stateful soxr resampler.
    """

    def __init__(
        self, stream_id: str, in_rate_hz: int, channels: int = 1, *, queue_s: float = 10.0
    ) -> None:
        self.stream_id = stream_id
        self.sample_rate_hz = OUTPUT_RATE_HZ
        self.in_rate_hz = in_rate_hz
        self.channels = channels
        self.stats = SourceStats()
        self.max_queued = max(1, int(queue_s * in_rate_hz))  # sample frames at in_rate_hz
        self._resampler = StreamResampler(in_rate_hz, OUTPUT_RATE_HZ, channels)
        self._blocks: deque[npt.NDArray[np.float32]] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._ended = False

    def feed(self, block: npt.NDArray[np.float32]) -> None:
        """Queue decoded audio ``(samples,)`` or ``(samples, channels)``; never blocks."""
        if self._ended or len(block) == 0:
            return
        self._blocks.append(block)
        self._queued += len(block)
        while self._queued > self.max_queued and len(self._blocks) > 1:
            self._queued -= len(self._blocks.popleft())
            self.stats.dropped_frames += 1
            if self.stats.dropped_frames in (1, 10, 100) or self.stats.dropped_frames % 1000 == 0:
                log.warning(
                    "stream %s: analysis is behind, dropped %d network audio block(s) so far",
                    self.stream_id,
                    self.stats.dropped_frames,
                )
        self._ready.set()

    def count_dropped(self, n: int = 1) -> None:
        """Record ``n`` frames the session discarded (malformed) before they got here."""
        self.stats.dropped_frames += n

    def end(self) -> None:
        """No more audio: the iterator drains the queue, flushes the resampler and stops."""
        self._ended = True
        self._ready.set()

    @property
    def ended(self) -> bool:
        return self._ended

    async def __aenter__(self) -> NetworkSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = True
        self._blocks.clear()
        self._queued = 0

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            while not self._blocks:
                if self._ended:
                    tail = self._resampler.flush()
                    if tail.size:
                        self._count(tail)
                        yield tail
                    return
                self._ready.clear()
                await self._ready.wait()
            blocks = list(self._blocks)
            self._blocks.clear()
            self._queued = 0
            block = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            frame = self._resampler.push(block)
            if frame.size:
                self._count(frame)
                yield frame

    def _count(self, frame: Frame) -> None:
        self.stats.frames += 1
        self.stats.samples += int(frame.size)


# ----------------------------------------------------------------- sessions
@dataclass
class NetworkStats:
    """Counters of the network endpoints, shown in ``/healthz`` under ``network``."""

    active: int = 0
    sessions: int = 0
    refused: int = 0  # over max_sessions
    closed: dict[str, int] = field(default_factory=dict)  # fatal code -> sessions closed
    errors: dict[str, int] = field(default_factory=dict)  # non-fatal code -> count

    def count(self, problem: Problem) -> None:
        target = self.closed if problem.fatal else self.errors
        target[problem.code] = target.get(problem.code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "sessions": self.sessions,
            "refused": self.refused,
            "closed": dict(self.closed),
            "errors": dict(self.errors),
        }


class SessionLimit:
    """Admits at most ``max_sessions`` sessions across the network endpoints."""

    def __init__(self, max_sessions: int, stats: NetworkStats) -> None:
        self.max_sessions = max_sessions
        self.stats = stats

    def enter(self) -> bool:
        if self.stats.active >= self.max_sessions:
            self.stats.refused += 1
            return False
        self.stats.active += 1
        self.stats.sessions += 1
        return True

    def leave(self) -> None:
        self.stats.active -= 1


def request_token(request: Request | None) -> str | None:
    """The bearer token a handshake presents (see :func:`streamer.access.request_token`)."""
    return None if request is None else _request_token(request.path, request.headers)


def access_problem(
    fail: Callable[[str, str], Problem], request: Request | None, token: str | None
) -> Problem | None:
    """Refuse a handshake without the token (``None``: no token configured, all pass;
    Host and Origin were checked by the server before the handshake).

    ``fail(code, message)`` makes the (fatal) problem on the session's protocol."""
    if token is not None and not token_matches(request_token(request), token):
        return fail(
            "unauthorized",
            "missing or wrong token; send 'Authorization: Bearer <token>', the subprotocol "
            "bearer.<token>, or ?token=<token>",
        )
    return None


def _reason(text: str) -> str:
    """A close reason of at most 123 UTF-8 bytes (the WebSocket limit)."""
    data = text.encode("utf-8")
    return text if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."


async def close_with(conn: ServerConnection, problem: Problem, *, report: bool = True) -> None:
    """Tell the client the fatal ``problem`` (JSON), then close with its code."""
    with contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
        if report:
            await conn.send(json.dumps(problem.to_message()))
        await conn.close(problem.close_code or 1011, _reason(f"{problem.code}: {problem.message}"))


async def finish_stream(task: asyncio.Task[dict[str, int]]) -> dict[str, int] | None:
    """Wait (bounded) for a network stream to publish its last results; its counters."""
    done, _ = await asyncio.wait([task], timeout=FLUSH_TIMEOUT_S)
    if not done:
        task.cancel()
        await asyncio.wait([task])
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


class IngestServer:
    """The ``/ingest`` route: one :class:`IngestProtocol` per WebSocket session.

    Args:
        host: runs the streams (the daemon).
        limits: per-session limits.
        gate: the daemon-wide session limit (shared with the Twilio endpoint).
        token: the bearer token every session must present (``access``); ``None``: no auth
            (loopback only, unless access.allow_insecure).
        start_timeout_s: a session must start within this many seconds.
        queue_s: audio buffered per stream (see :class:`NetworkSource`).
    """

    def __init__(
        self,
        host: StreamHost,
        limits: IngestLimits,
        gate: SessionLimit,
        *,
        token: str | None = None,
        start_timeout_s: float = 10.0,
        queue_s: float = 10.0,
    ) -> None:
        self.host = host
        self.limits = limits
        self.gate = gate
        self.stats = gate.stats
        self.token = token
        self.start_timeout_s = start_timeout_s
        self.queue_s = queue_s

    async def handle(self, conn: ServerConnection) -> None:
        """Serve one session until it stops, fails or the client goes away."""
        session_id = uuid.uuid4().hex
        proto = IngestProtocol(session_id, self.limits)
        if not self.gate.enter():
            problem = proto.fail(
                "busy",
                f"the monitor serves {self.gate.max_sessions} sessions already; try again later",
            )
            self.stats.count(problem)
            await close_with(conn, problem)
            return
        session = _Session()  # filled in by _serve, ended here whatever happens
        stopped = False
        try:
            denied = access_problem(proto.fail, conn.request, self.token)
            if denied is not None:
                self.stats.count(denied)
                await close_with(conn, denied)
                return
            stopped = await self._serve(conn, proto, session)
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must end this session only
            log.exception("ingest session %s failed", session_id)
            problem = proto.fail("internal", "internal error; see the monitor's log")
            self.stats.count(problem)
            await close_with(conn, problem)
        finally:
            counters: dict[str, int] | None = None
            if session.source is not None:
                session.source.end()
            if session.task is not None:
                counters = await finish_stream(session.task)
            self.gate.leave()
            if proto.start is not None:
                log.info(
                    "ingest session %s (stream %s) ended: %s",
                    session_id,
                    proto.start.stream_id,
                    proto.summary(),
                )
        if stopped:
            assert proto.start is not None
            with contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
                await conn.send(
                    json.dumps(
                        {
                            "type": "stopped",
                            "v": 1,
                            "session_id": session_id,
                            "stream_id": proto.start.stream_id,
                            "session": proto.summary(),
                            "counters": counters or {},
                        }
                    )
                )
                await conn.close(CLOSE_NORMAL, "stopped")

    async def _serve(
        self, conn: ServerConnection, proto: IngestProtocol, session: _Session
    ) -> bool:
        """Receive until the session ends; True when it ended with a ``stop``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            try:
                if proto.state == "new":
                    async with asyncio.timeout_at(deadline):
                        msg = await conn.recv()
                else:
                    msg = await conn.recv()
            except TimeoutError:
                problem = proto.fail("start_timeout", f"no start within {self.start_timeout_s:g} s")
                self.stats.count(problem)
                await close_with(conn, problem)
                return False
            except ConnectionClosed:
                return False  # the client went away: end the stream
            now = loop.time()
            if isinstance(msg, bytes):
                outputs = proto.receive_bytes(msg, now)
            else:
                outputs = proto.receive_text(msg, now)
            for out in outputs:
                if isinstance(out, Audio):
                    assert session.source is not None
                    session.source.feed(out.samples)
                elif isinstance(out, Start):
                    source = NetworkSource(
                        out.stream_id,
                        out.format.sample_rate_hz,
                        out.format.channels,
                        queue_s=self.queue_s,
                    )
                    task = self.host.open_network_stream(out.stream_id, source, role=out.role)
                    if task is None:
                        problem = proto.fail(
                            "stream_in_use", f"stream id {out.stream_id!r} is in use; pick another"
                        )
                        self.stats.count(problem)
                        await close_with(conn, problem)
                        return False
                    session.source, session.task = source, task
                    task.add_done_callback(functools.partial(close_on_stream_end, conn=conn))
                    log.info(
                        "ingest session %s: stream %s, %d Hz %s x%d%s",
                        proto.session_id,
                        out.stream_id,
                        out.format.sample_rate_hz,
                        out.format.encoding,
                        out.format.channels,
                        f", metadata {out.metadata}" if out.metadata else "",
                    )
                    await conn.send(json.dumps(out.started_message(self.limits)))
                elif isinstance(out, Stop):
                    return proto.start is not None
                else:
                    self.stats.count(out)
                    if out.code == "odd_length" and session.source is not None:
                        session.source.count_dropped()
                    if out.fatal:
                        await close_with(conn, out)
                        return False
                    await conn.send(json.dumps(out.to_message()))


@dataclass
class _Session:
    """The stream of one /ingest session, once it started."""

    source: NetworkSource | None = None
    task: asyncio.Task[dict[str, int]] | None = None


def close_on_stream_end(task: asyncio.Task[Any], conn: ServerConnection) -> None:
    """A network stream that ended on its own (failure, daemon stopping) closes its socket."""
    if task.cancelled():
        code, reason = 1001, "shutting_down: the monitor is stopping"
    elif task.exception() is not None:
        code, reason = 1011, _reason(f"internal: stream failed: {task.exception()}")
    else:
        return  # ended because the session ended
    with contextlib.suppress(RuntimeError):
        closer = asyncio.get_running_loop().create_task(conn.close(code, reason))
        _BACKGROUND.add(closer)
        closer.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[Any]] = set()  # keeps fire-and-forget closes alive


def install_endpoints(
    host: StreamHost, cfg: IngestConfig, websocket: WebSocketPublisher, *, token: str | None
) -> NetworkStats:
    """Add the ``/ingest`` and Twilio routes of ``cfg`` to the daemon's WebSocket server,
    guarded by ``token`` (the daemon's one token, ``access``; ``None``: none).

    Both share one session limit and one :class:`NetworkStats` (returned, for ``/healthz``).
    """
    from streamer.sources.twilio import TwilioServer

    stats = NetworkStats()
    gate = SessionLimit(cfg.max_sessions, stats)
    limits = IngestLimits(
        max_frame_bytes=cfg.max_frame_bytes,
        max_control_bytes=cfg.max_control_bytes,
        max_bytes_per_s=cfg.max_bytes_per_s,
        max_speed=cfg.max_speed,
        burst_s=cfg.burst_s,
        max_errors=cfg.max_errors,
        analyse_agent=cfg.analyse_agent,
    )
    if cfg.analyse_agent and cfg.enabled:  # the Twilio route warns for its own agent leg
        log.warning(
            "ingest.analyse_agent is on: agents' voices on %s (role 'agent') are analysed. "
            "Emotion recognition of workers is prohibited in the EU (AI Act, Article 5(1)(f)) "
            "except for medical or safety reasons; read docs/intended-use.md",
            cfg.path,
        )
    common: dict[str, Any] = {
        "token": token,
        "start_timeout_s": cfg.start_timeout_s,
        "queue_s": cfg.queue_s,
    }
    paths = []
    if cfg.enabled:
        ingest = IngestServer(host, limits, gate, **common)
        websocket.add_route(
            cfg.path,
            ingest.handle,
            max_message_bytes=max(cfg.max_frame_bytes, cfg.max_control_bytes),
        )
        paths.append(cfg.path)
    if cfg.twilio.enabled:
        names = TrackNames(cfg.twilio.inbound_name, cfg.twilio.outbound_name, cfg.analyse_agent)
        twilio = TwilioServer(host, limits, gate, names=names, **common)
        websocket.add_route(cfg.twilio.path, twilio.handle, max_message_bytes=cfg.max_control_bytes)
        paths.append(f"{cfg.twilio.path} (Twilio)")
    log.info(
        "network audio on %s, %s",
        ", ".join(paths),
        "token required" if token else "no token: loopback only",
    )
    return stats
