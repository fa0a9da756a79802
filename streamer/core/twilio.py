"""Twilio Media Streams as a state machine (sans-I/O).

Twilio opens a WebSocket to the daemon and sends JSON text messages
(https://www.twilio.com/docs/voice/media-streams/websocket-messages):

* ``connected`` (``protocol``, ``version``), once;
* ``start``: ``start.streamSid``, ``start.callSid``, ``start.accountSid``,
  ``start.tracks`` (``inbound`` and/or ``outbound``), ``start.customParameters``
  (the TwiML ``<Parameter>`` values) and ``start.mediaFormat``
  (``{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}``);
* ``media``: ``media.track`` (``inbound``/``outbound``), ``media.chunk``,
  ``media.timestamp`` (ms) and ``media.payload``: base64 mu-law, 20 ms per message;
* ``mark`` and ``dtmf`` (ignored here), and ``stop`` at the end of the call.

Each track becomes its own stream, ``<callSid>.<name>``: the ``inbound`` track
(what Twilio receives from the phone: the caller or customer) is named
``caller`` and analysed; the ``outbound`` track (what the caller hears: the
agent or a voice bot) is named ``agent`` and analysed only when
``analyse_agent`` is on. Emotion recognition of workers is prohibited in the
EU (AI Act, Art. 5(1)(f)), so the lawful default analyses the customer only.

Twilio reads nothing we send on a unidirectional stream, so problems are not
reported back: non-fatal ones are counted (and logged by the adapter), fatal
ones close the socket with a code (see :mod:`streamer.core.ingest`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.core.codecs import mulaw_decode
from streamer.core.ingest import (
    STREAM_ID_RE,
    ErrorCounter,
    IngestLimits,
    Problem,
    ProtocolError,
    RateLimiter,
    parse_json_object,
)

TRACKS: Final = ("inbound", "outbound")
SID_RE: Final = re.compile(r"^[A-Za-z0-9]{1,64}$")
MULAW_MEDIA_TYPE: Final = "audio/x-mulaw"
MAX_CUSTOM_PARAMETERS: Final = 32


@dataclass(frozen=True)
class TrackNames:
    """How tracks become streams, and which are analysed."""

    inbound: str = "caller"
    """Stream id suffix of the inbound track (the caller / customer)."""
    outbound: str = "agent"
    """Stream id suffix of the outbound track (the agent or voice bot)."""
    analyse_agent: bool = False
    """Also analyse the outbound track (off by default: EU AI Act Art. 5(1)(f))."""

    def name(self, track: str) -> str:
        return self.inbound if track == "inbound" else self.outbound

    def analysed(self, track: str) -> bool:
        return track == "inbound" or self.analyse_agent


@dataclass(frozen=True)
class CallStart:
    """A valid ``start``: ``streams`` maps each analysed track to its stream id."""

    call_sid: str
    stream_sid: str
    tracks: tuple[str, ...]
    streams: dict[str, str]
    roles: dict[str, str]
    sample_rate_hz: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackAudio:
    """Decoded audio of one track: float32 ``(samples,)`` in [-1, 1] at the call's rate."""

    track: str
    stream_id: str
    samples: npt.NDArray[np.float32]


@dataclass(frozen=True)
class CallStop:
    """Twilio ended the stream (``stop``)."""


TwilioOutput = CallStart | TrackAudio | CallStop | Problem


def _require_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not SID_RE.match(value):
        raise ProtocolError(
            "bad_start", f"{where}.{key} must be a Twilio SID (letters and digits), got {value!r}"
        )
    return value


class TwilioProtocol:
    """One Twilio Media Streams connection; see the module docstring.

    Args:
        limits: message size, audio speed and error limits (``max_control_bytes``
            bounds each JSON message; ``max_speed``/``burst_s`` apply per track).
        names: track names and the agent policy.
    """

    def __init__(self, limits: IngestLimits | None = None, names: TrackNames | None = None) -> None:
        self.limits = limits or IngestLimits()
        self.names = names or TrackNames()
        self.state = "new"  # new -> started -> ended
        self.start: CallStart | None = None
        self.errors = ErrorCounter(self.limits.max_errors)
        self.media = {t: 0 for t in TRACKS}  # media messages analysed per track
        self.ignored = {t: 0 for t in TRACKS}  # media of tracks not analysed (agent policy)
        self.dropped = {t: 0 for t in TRACKS}  # media discarded as malformed, per track
        self.marks = 0
        self.dtmf = 0
        self._rates: dict[str, RateLimiter] = {}

    def fail(self, code: str, message: str) -> Problem:
        """A fatal problem found by the adapter (auth, stream id in use, ...)."""
        self.state = "ended"
        return self.errors.problem(code, message)

    def receive_bytes(self, data: bytes, now_s: float) -> list[TwilioOutput]:
        """Twilio only sends text; a binary frame is discarded (non-fatal)."""
        if self.state == "ended":
            return []
        return self._out(
            self.errors.problem(
                "bad_message", "Twilio messages are JSON text; binary frame ignored"
            )
        )

    def _out(self, item: TwilioOutput) -> list[TwilioOutput]:
        if isinstance(item, CallStop) or (isinstance(item, Problem) and item.fatal):
            self.state = "ended"
        return [item]

    def receive_text(self, text: str | bytes, now_s: float) -> list[TwilioOutput]:
        """A message arrived at ``now_s`` (seconds, any monotonic clock)."""
        if self.state == "ended":
            return []
        try:
            msg = parse_json_object(text, self.limits.max_control_bytes, "Twilio message")
            event = msg.get("event")
            if event == "media":
                return self._on_media(msg, now_s)
            if event == "start":
                if self.state != "new":
                    raise ProtocolError(
                        "already_started", "a second start on one connection; ignored"
                    )
                return self._out(self._on_start(msg, now_s))
            if event == "stop":
                return self._out(CallStop())
            if event == "connected":
                return []
            if event == "mark":
                self.marks += 1
                return []
            if event == "dtmf":
                self.dtmf += 1
                return []
            raise ProtocolError("unknown_event", f"unknown Twilio event {event!r}; ignored")
        except ProtocolError as exc:
            return self._out(self.errors.problem(exc.code, exc.message))

    def _on_start(self, msg: dict[str, Any], now_s: float) -> CallStart:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise ProtocolError("bad_start", "start message without a start object")
        call_sid = _require_str(start, "callSid", "start")
        stream_sid = _require_str(start, "streamSid", "start")
        tracks = start.get("tracks", ["inbound"])
        if (
            not isinstance(tracks, list)
            or not tracks
            or any(t not in TRACKS for t in tracks)
            or len(set(tracks)) != len(tracks)
        ):
            raise ProtocolError(
                "bad_start", f"start.tracks must list inbound and/or outbound, got {tracks!r}"
            )
        fmt = start.get("mediaFormat")
        if not isinstance(fmt, dict):
            raise ProtocolError("bad_start", "start.mediaFormat is missing")
        if fmt.get("encoding") != MULAW_MEDIA_TYPE or fmt.get("channels", 1) != 1:
            raise ProtocolError(
                "unsupported_format",
                f"start.mediaFormat {fmt!r} is not supported; Twilio sends {MULAW_MEDIA_TYPE}, 1 channel",
            )
        rate = fmt.get("sampleRate")
        if isinstance(rate, bool) or not isinstance(rate, int) or not 8000 <= rate <= 48000:
            raise ProtocolError(
                "unsupported_format", f"start.mediaFormat.sampleRate {rate!r}; expected 8000"
            )
        params = start.get("customParameters", {})
        if (
            not isinstance(params, dict)
            or len(params) > MAX_CUSTOM_PARAMETERS
            or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) <= 1024
                for k, v in params.items()
            )
        ):
            raise ProtocolError("bad_start", "start.customParameters must be an object of strings")
        streams: dict[str, str] = {}
        roles: dict[str, str] = {}
        for track in tracks:
            if not self.names.analysed(track):
                continue
            sid = f"{call_sid}.{self.names.name(track)}"
            if not STREAM_ID_RE.match(sid):
                raise ProtocolError(
                    "bad_start", f"stream id {sid!r} is invalid; check the track names"
                )
            streams[track] = sid
            roles[track] = self.names.name(track)
            self._rates[track] = RateLimiter(self.limits.max_speed, self.limits.burst_s)
            self._rates[track].allow(0.0, now_s)
        self.state = "started"
        self.start = CallStart(
            call_sid, stream_sid, tuple(tracks), streams, roles, rate, dict(params)
        )
        return self.start

    def _on_media(self, msg: dict[str, Any], now_s: float) -> list[TwilioOutput]:
        if self.start is None:
            raise ProtocolError("not_started", "media before start; discarded")
        media = msg.get("media")
        if not isinstance(media, dict):
            raise ProtocolError("bad_message", "media message without a media object; discarded")
        track = media.get("track", "inbound")
        if track not in self.start.tracks:
            raise ProtocolError(
                "unknown_track",
                f"media for track {track!r}, which start did not announce ({list(self.start.tracks)}); discarded",
            )
        if track not in self.start.streams:
            self.ignored[track] += 1
            return []
        payload = media.get("payload")
        try:
            if not isinstance(payload, str):
                raise ValueError("payload is not a string")
            data = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error) as exc:
            self.dropped[track] += 1
            raise ProtocolError(
                "bad_payload", f"media payload is not base64 ({exc}); discarded"
            ) from None
        if not data:
            raise ProtocolError("empty_frame", "media payload is empty; ignored")
        audio_s = len(data) / self.start.sample_rate_hz
        if not self._rates[track].allow(audio_s, now_s):
            raise ProtocolError(
                "too_fast",
                f"track {track} sends audio faster than {self.limits.max_speed:g}x real time "
                f"(beyond a {self.limits.burst_s:g} s burst)",
            )
        self.media[track] += 1
        return [TrackAudio(track, self.start.streams[track], mulaw_decode(data))]

    def summary(self) -> dict[str, Any]:
        """Counters of this connection (for logs and /healthz)."""
        return {
            "media": dict(self.media),
            "ignored": dict(self.ignored),
            "dropped": dict(self.dropped),
            "marks": self.marks,
            "errors": dict(self.errors.by_code),
        }
