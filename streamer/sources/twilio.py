"""Phone calls from Twilio Media Streams: one stream per analysed track.

Twilio connects to the daemon's ``/twilio`` endpoint (``docs/twilio.md``) and
sends the call's audio as JSON messages; the sans-I/O
:class:`streamer.core.twilio.TwilioProtocol` turns them into per-track audio.
Each analysed track gets its own :class:`~streamer.sources.ingest.NetworkSource`
and stream (``<callSid>.caller``, and ``<callSid>.agent`` only when
``ingest.analyse_agent`` is on), so the two voices are never mixed. 8 kHz
mu-law is decoded with numpy (G.711) and resampled to 16 kHz by the same
stateful soxr resampler the microphone uses.

Authentication: Twilio cannot send headers and its ``<Stream url>`` takes no
query string, so the token travels as a TwiML ``<Parameter name="token">``
and arrives in ``start.customParameters``; a token in the URL query or an
``Authorization`` header (a proxy may add one) is accepted as well. Twilio
reads nothing we send on a unidirectional stream: non-fatal problems are
counted (``/healthz`` ``network.errors``) and logged once per kind and call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamer.core.ingest import CLOSE_NORMAL, IngestLimits, Problem
from streamer.core.twilio import CallStart, CallStop, TrackAudio, TrackNames, TwilioProtocol
from streamer.sources.ingest import (
    NetworkSource,
    SessionLimit,
    StreamHost,
    close_on_stream_end,
    close_with,
    finish_stream,
    request_token,
    token_matches,
)

log = logging.getLogger(__name__)


class TwilioServer:
    """The Twilio Media Streams route; one :class:`TwilioProtocol` per call.

    Args:
        host: runs the streams (the daemon).
        limits: message size, speed and error limits (per track).
        gate: the daemon-wide session limit (shared with ``/ingest``).
        names: stream names of the tracks and the agent policy.
        token: required token (header, query or ``customParameters.token``); ``None``: none.
        start_timeout_s: the call's ``start`` must arrive within this many seconds.
        queue_s: audio buffered per track (see :class:`NetworkSource`).
    """

    def __init__(
        self,
        host: StreamHost,
        limits: IngestLimits,
        gate: SessionLimit,
        *,
        names: TrackNames,
        token: str | None = None,
        start_timeout_s: float = 10.0,
        queue_s: float = 10.0,
    ) -> None:
        self.host = host
        self.limits = limits
        self.gate = gate
        self.stats = gate.stats
        self.names = names
        self.token = token
        self.start_timeout_s = start_timeout_s
        self.queue_s = queue_s
        if names.analyse_agent:
            log.warning(
                "ingest.analyse_agent is on: the agent leg of every Twilio call (<callSid>.%s) is "
                "analysed. Emotion recognition in the workplace is prohibited in the EU (AI Act, "
                "Article 5(1)(f)) except for medical or safety reasons; read docs/intended-use.md "
                "and turn ingest.analyse_agent off unless such a reason applies",
                names.outbound,
            )

    async def handle(self, conn: ServerConnection) -> None:
        """Serve one call until Twilio stops it, it fails, or the socket closes."""
        proto = TwilioProtocol(self.limits, self.names)
        tag = uuid.uuid4().hex[:8]
        if not self.gate.enter():
            problem = proto.fail(
                "busy", f"the monitor serves {self.gate.max_sessions} sessions already"
            )
            self.stats.count(problem)
            await close_with(conn, problem, report=False)
            return
        call = _Call(tag)
        try:
            # A token in the URL or a header authenticates at once; otherwise it must come in start.
            pre_authed = self.token is None or token_matches(
                request_token(conn.request), self.token
            )
            graceful = await self._serve(conn, proto, call, pre_authed)
        except ConnectionClosed:
            graceful = False
        except Exception:  # a bug here must end this call only
            log.exception("twilio call %s failed", tag)
            problem = proto.fail("internal", "internal error")
            self.stats.count(problem)
            await close_with(conn, problem, report=False)
            graceful = False
        finally:
            for source in call.sources.values():
                source.end()
            for task in call.tasks.values():
                await finish_stream(task)
            self.gate.leave()
            if proto.start is not None:
                log.info("twilio call %s ended: %s", proto.start.call_sid, proto.summary())
        if graceful:
            with contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
                await conn.close(CLOSE_NORMAL, "stopped")

    async def _serve(
        self, conn: ServerConnection, proto: TwilioProtocol, call: _Call, pre_authed: bool
    ) -> bool:
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
                await close_with(conn, problem, report=False)
                return False
            except ConnectionClosed:
                return False
            now = loop.time()
            outputs = (
                proto.receive_bytes(msg, now)
                if isinstance(msg, bytes)
                else proto.receive_text(msg, now)
            )
            for out in outputs:
                if isinstance(out, TrackAudio):
                    call.sources[out.track].feed(out.samples)
                elif isinstance(out, CallStart):
                    refused = self._start(conn, proto, out, call, pre_authed)
                    if refused is not None:
                        self.stats.count(refused)
                        await close_with(conn, refused, report=False)
                        return False
                elif isinstance(out, CallStop):
                    return True
                else:
                    self._problem(proto, out, call)
                    if out.fatal:
                        await close_with(conn, out, report=False)
                        return False

    def _start(
        self,
        conn: ServerConnection,
        proto: TwilioProtocol,
        start: CallStart,
        call: _Call,
        pre_authed: bool,
    ) -> Problem | None:
        if not pre_authed:
            assert self.token is not None
            if not token_matches(start.custom_parameters.get("token"), self.token):
                return proto.fail(
                    "unauthorized",
                    'missing or wrong token; add <Parameter name="token" value="..."/> to the <Stream>',
                )
        for track, stream_id in start.streams.items():
            source = NetworkSource(stream_id, start.sample_rate_hz, 1, queue_s=self.queue_s)
            task = self.host.open_network_stream(stream_id, source, role=start.roles[track])
            if task is None:
                return proto.fail("stream_in_use", f"stream {stream_id} is already being analysed")
            task.add_done_callback(functools.partial(close_on_stream_end, conn=conn))
            call.sources[track] = source
            call.tasks[track] = task
        skipped = [t for t in start.tracks if t not in start.streams]
        log.info(
            "twilio call %s (stream %s): analysing %s%s",
            start.call_sid,
            start.stream_sid,
            ", ".join(start.streams.values()) or "nothing",
            f"; not analysing the {', '.join(skipped)} track (agent: ingest.analyse_agent is off)"
            if skipped
            else "",
        )
        return None

    def _problem(self, proto: TwilioProtocol, problem: Problem, call: _Call) -> None:
        self.stats.count(problem)
        for track, source in call.sources.items():  # malformed media: lost audio of that track
            new = proto.dropped[track] - call.dropped_seen.get(track, 0)
            if new:
                source.count_dropped(new)
                call.dropped_seen[track] = proto.dropped[track]
        if problem.count == 1:  # once per kind and call
            who = proto.start.call_sid if proto.start else call.tag
            log.warning("twilio call %s: %s: %s", who, problem.code, problem.message)


class _Call:
    """The streams of one call."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sources: dict[str, NetworkSource] = {}
        self.tasks: dict[str, asyncio.Task[dict[str, int]]] = {}
        self.dropped_seen: dict[str, int] = {}
