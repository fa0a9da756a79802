"""The network audio ingest protocol as a state machine (sans-I/O).

:class:`IngestProtocol` is one ``/ingest`` WebSocket session: the adapter
hands it every received message (text or bytes) with the wall-clock time it
arrived, and gets back what to do: start a stream, feed decoded audio, send
an error, close the session with a code. It never touches a socket or a clock
itself, so every rule below is tested with plain inputs. The protocol is
documented for clients in ``docs/ingest.md`` (JSON Schemas in ``docs/schemas``).

Errors are typed (:class:`Problem`) and split in two:

* non-fatal: the message is discarded, the client gets a JSON ``error``
  message, the error is counted and the session goes on (a malformed control
  message, audio before ``start``, an odd-length audio frame, ...);
* fatal: the session is closed with a WebSocket close code and a reason (a
  bad ``start``, an unknown encoding, a frame too large, audio arriving much
  faster than real time, too many non-fatal errors, ...).

The limits (:class:`IngestLimits`) bound every message before it is parsed:
a control message is measured before ``json.loads`` sees it, an audio frame
before it is decoded. Audio speed is bounded with a token bucket counted in
seconds of audio: it refills at ``max_speed`` seconds of audio per second of
wall-clock time and holds at most ``burst_s``, so a client may catch up after
a network stall but cannot flood.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from dropformer.errors import EmotionMonitorError
from streamer.core.codecs import ENCODINGS, decode, frame_bytes
from streamer.core.jsonguard import MessageError, loads_object

PROTOCOL_VERSION: Final = 1
STREAM_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
METADATA_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_METADATA_ITEMS: Final = 16
MAX_METADATA_VALUE_CHARS: Final = 256
MIN_RATE_HZ: Final = 8000
MAX_RATE_HZ: Final = 192000
MAX_CHANNELS: Final = 8

# WebSocket close codes (RFC 6455 where one fits, 4xxx = this protocol's, after HTTP).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_BAD_START: Final = 4400
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_START_TIMEOUT: Final = 4408
CLOSE_STREAM_IN_USE: Final = 4409
CLOSE_UNSUPPORTED_FORMAT: Final = 4415
CLOSE_TOO_FAST: Final = 4429

#: fatal error code -> WebSocket close code
FATAL: Final[dict[str, int]] = {
    "bad_start": CLOSE_BAD_START,
    "unauthorized": CLOSE_UNAUTHORIZED,
    "forbidden": CLOSE_FORBIDDEN,
    "start_timeout": CLOSE_START_TIMEOUT,
    "stream_in_use": CLOSE_STREAM_IN_USE,
    "unsupported_format": CLOSE_UNSUPPORTED_FORMAT,
    "too_fast": CLOSE_TOO_FAST,
    "too_large": CLOSE_TOO_BIG,
    "too_many_errors": CLOSE_POLICY,
    "busy": CLOSE_TRY_AGAIN_LATER,
    "shutting_down": CLOSE_GOING_AWAY,
    "internal": CLOSE_INTERNAL,
}
#: non-fatal error codes: reported and counted, the session goes on
NON_FATAL: Final[tuple[str, ...]] = (
    "bad_message",  # a control message that is not valid JSON or not an object
    "unknown_type",  # a control message of a type this server does not know
    "not_started",  # audio (or stop-less control) before start
    "already_started",  # a second start
    "odd_length",  # an audio frame that is not a whole number of sample frames
    "empty_frame",  # an audio frame of zero bytes
    "bad_payload",  # Twilio: media payload that is not base64
    "unknown_track",  # Twilio: media for a track the start did not announce
    "unknown_event",  # Twilio: an event this server does not know
)


class ProtocolError(EmotionMonitorError):
    """A client broke the ingest protocol; ``code`` says how (see ``FATAL``/``NON_FATAL``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        return self.code in FATAL

    @property
    def close_code(self) -> int | None:
        return FATAL.get(self.code)


@dataclass(frozen=True)
class Problem:
    """Something wrong with what the client sent. ``fatal``: close the session
    with ``close_code``; otherwise report it and go on. ``count`` is how many
    errors of this code the session has made so far."""

    code: str
    message: str
    count: int = 1

    @property
    def fatal(self) -> bool:
        return self.code in FATAL

    @property
    def close_code(self) -> int | None:
        return FATAL.get(self.code)

    def to_message(self) -> dict[str, Any]:
        """The JSON ``error`` message sent to the client (docs/schemas/ingest-error.schema.json)."""
        return {
            "type": "error",
            "v": PROTOCOL_VERSION,
            "code": self.code,
            "message": self.message,
            "fatal": self.fatal,
            "count": self.count,
        }


@dataclass(frozen=True)
class IngestLimits:
    """Bounds of one session (see ``ingest`` in ``configs/default.yaml``)."""

    max_frame_bytes: int = 65536
    """Largest binary audio frame, bytes."""
    max_control_bytes: int = 4096
    """Largest text (JSON) control message, bytes, checked before parsing."""
    max_bytes_per_s: int = 400_000
    """Largest declared data rate of a session (rate x channels x sample bytes), bytes/s."""
    max_speed: float = 1.5
    """Audio may arrive at most this many times faster than real time (after the burst)."""
    burst_s: float = 5.0
    """Seconds of audio a client may send ahead of real time (catching up after a stall)."""
    max_errors: int = 100
    """Non-fatal errors a session may make before it is closed."""
    analyse_agent: bool = False
    """Accept sessions whose metadata role is ``agent`` (EU AI Act Art. 5(1)(f): off by default)."""

    def public(self) -> dict[str, Any]:
        """The limits a client is told in the ``started`` reply."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_control_bytes": self.max_control_bytes,
            "max_bytes_per_s": self.max_bytes_per_s,
            "max_speed": self.max_speed,
            "burst_s": self.burst_s,
        }


class RateLimiter:
    """Token bucket counted in seconds of audio, driven by timestamps the caller gives.

    Refills at ``speed`` seconds of audio per second of time, holds at most
    ``burst_s``, starts full at the first call's time.
    """

    def __init__(self, speed: float, burst_s: float) -> None:
        if not (speed > 0 and burst_s > 0):
            raise ValueError(f"speed and burst_s must be > 0, got {speed}, {burst_s}")
        self.speed = speed
        self.burst_s = burst_s
        self._tokens_s = burst_s
        self._last_s: float | None = None

    def allow(self, audio_s: float, now_s: float) -> bool:
        """Take ``audio_s`` seconds of audio arriving at ``now_s``; False when over the limit."""
        if self._last_s is not None:
            self._tokens_s = min(
                self.burst_s, self._tokens_s + max(0.0, now_s - self._last_s) * self.speed
            )
        self._last_s = now_s
        if audio_s > self._tokens_s + 1e-9:
            return False
        self._tokens_s -= audio_s
        return True


@dataclass(frozen=True)
class AudioFormat:
    """What the client said it sends."""

    sample_rate_hz: int
    encoding: str
    channels: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (every channel)."""
        return frame_bytes(self.encoding, self.channels)

    @property
    def bytes_per_s(self) -> int:
        """Data rate in real time, bytes per second."""
        return self.sample_rate_hz * self.frame_bytes


@dataclass(frozen=True)
class Start:
    """A valid ``start``: open stream ``stream_id`` for audio in ``format``."""

    session_id: str
    stream_id: str
    format: AudioFormat
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def role(self) -> str | None:
        return self.metadata.get("role")

    def started_message(self, limits: IngestLimits) -> dict[str, Any]:
        """The ``started`` reply (docs/schemas/ingest-started.schema.json)."""
        return {
            "type": "started",
            "v": PROTOCOL_VERSION,
            "session_id": self.session_id,
            "stream_id": self.stream_id,
            "limits": limits.public(),
        }


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 ``(samples, channels)`` in [-1, 1] at the start's rate."""

    samples: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Stop:
    """The client asked to end the session (``stop``)."""


Output = Start | Audio | Stop | Problem


def parse_json_object(text: str | bytes, max_bytes: int, what: str) -> dict[str, Any]:
    """Bound, then parse, a JSON control message; raises ProtocolError.

    ``too_large`` when longer than ``max_bytes`` (measured before parsing),
    ``bad_message`` when nested too deep, not JSON or not an object.
    """
    try:
        return loads_object(text, max_bytes=max_bytes, what=what)
    except MessageError as exc:
        code = "too_large" if exc.code == "too_large" else "bad_message"
        raise ProtocolError(code, exc.message) from None


def _int_field(msg: Mapping[str, Any], key: str, low: int, high: int, default: int | None) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(
            "bad_start", f"start.{key} must be an integer from {low} to {high}, got {value!r}"
        )
    if not low <= value <= high:
        raise ProtocolError(
            "unsupported_format", f"start.{key} = {value} is out of range; use {low} to {high}"
        )
    return value


def parse_start(msg: Mapping[str, Any], session_id: str, limits: IngestLimits) -> Start:
    """Validate a ``start`` message (already a dict); raises a fatal ProtocolError."""
    known = {"type", "v", "stream_id", "sample_rate_hz", "encoding", "channels", "metadata"}
    unknown = sorted(set(msg) - known)
    if unknown:
        raise ProtocolError(
            "bad_start", f"start has unknown keys {unknown}; allowed: {sorted(known)}"
        )
    if msg.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_start", f"start.v = {msg.get('v')!r}; this server speaks v={PROTOCOL_VERSION}"
        )
    sid = msg.get("stream_id")
    if not isinstance(sid, str) or not STREAM_ID_RE.match(sid):
        raise ProtocolError(
            "bad_start",
            f"start.stream_id {sid!r} is invalid: use 1-128 letters, digits or _ . : -",
        )
    encoding = msg.get("encoding")
    if not isinstance(encoding, str):
        raise ProtocolError("bad_start", f"start.encoding must be one of {list(ENCODINGS)}")
    if encoding not in ENCODINGS:
        raise ProtocolError(
            "unsupported_format",
            f"start.encoding {encoding!r} is not supported; use one of {list(ENCODINGS)}",
        )
    rate = _int_field(msg, "sample_rate_hz", MIN_RATE_HZ, MAX_RATE_HZ, None)
    channels = _int_field(msg, "channels", 1, MAX_CHANNELS, 1)
    fmt = AudioFormat(rate, encoding, channels)
    if fmt.bytes_per_s > limits.max_bytes_per_s:
        raise ProtocolError(
            "unsupported_format",
            f"{rate} Hz x {channels} channel(s) of {encoding} is {fmt.bytes_per_s} bytes/s, over "
            f"this server's {limits.max_bytes_per_s} bytes/s; send fewer channels, a lower rate "
            "or a smaller encoding",
        )
    metadata = _parse_metadata(msg.get("metadata", {}))
    if metadata.get("role") == "agent" and not limits.analyse_agent:
        raise ProtocolError(
            "forbidden",
            "role 'agent' is not analysed: emotion recognition of workers is prohibited in the EU "
            "(AI Act Art. 5(1)(f)); the operator can enable it with ingest.analyse_agent",
        )
    return Start(session_id, sid, fmt, metadata)


def _parse_metadata(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ProtocolError("bad_start", "start.metadata must be an object of strings")
    if len(raw) > MAX_METADATA_ITEMS:
        raise ProtocolError(
            "bad_start", f"start.metadata has {len(raw)} keys; at most {MAX_METADATA_ITEMS}"
        )
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not METADATA_KEY_RE.match(key):
            raise ProtocolError(
                "bad_start", f"start.metadata key {key!r} must be 1-64 letters, digits or _ . -"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            raise ProtocolError(
                "bad_start",
                f"start.metadata.{key} must be a string of at most {MAX_METADATA_VALUE_CHARS} chars",
            )
        out[key] = value
    return out


class ErrorCounter:
    """Counts problems per code and turns the one over the limit into a fatal one."""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.by_code: dict[str, int] = {}
        self.total = 0

    def problem(self, code: str, message: str) -> Problem:
        n = self.by_code.get(code, 0) + 1
        self.by_code[code] = n
        if code in FATAL:
            return Problem(code, message, n)
        self.total += 1
        if self.total > self.max_errors:
            self.by_code["too_many_errors"] = 1
            return Problem(
                "too_many_errors",
                f"{self.total} malformed messages (last: {code}: {message}); closing the session",
            )
        return Problem(code, message, n)


class IngestProtocol:
    """One ``/ingest`` session; see the module docstring.

    States: ``new`` (waiting for ``start``), ``started``, ``ended`` (stopped
    or closed by a fatal problem; everything after is ignored).
    """

    def __init__(self, session_id: str, limits: IngestLimits | None = None) -> None:
        self.session_id = session_id
        self.limits = limits or IngestLimits()
        self.state = "new"
        self.start: Start | None = None
        self.errors = ErrorCounter(self.limits.max_errors)
        self.frames = 0
        self.bytes = 0
        self.samples = 0  # sample frames received (at the client's rate)
        self.dropped_frames = 0  # audio frames discarded as malformed
        self._rate: RateLimiter | None = None

    @property
    def audio_s(self) -> float:
        """Seconds of audio received so far."""
        return self.samples / self.start.format.sample_rate_hz if self.start else 0.0

    def _end(self, out: list[Output]) -> list[Output]:
        """Mark the session ended when ``out`` ends it (a stop or a fatal problem)."""
        last = out[-1] if out else None
        if isinstance(last, Stop) or (isinstance(last, Problem) and last.fatal):
            self.state = "ended"
        return out

    def fail(self, code: str, message: str) -> Problem:
        """A fatal problem found by the adapter (auth, time-out, stream id in use, ...)."""
        self.state = "ended"
        return self.errors.problem(code, message)

    def receive_text(self, text: str | bytes, now_s: float) -> list[Output]:
        """A text (control) message arrived at ``now_s`` (seconds, any monotonic clock)."""
        if self.state == "ended":
            return []
        try:
            msg = parse_json_object(text, self.limits.max_control_bytes, "control message")
            kind = msg.get("type")
            if kind == "start":
                return self._end(self._on_start(msg, now_s))
            if kind == "stop":
                return self._end([Stop()])
            if self.state == "new":
                raise ProtocolError(
                    "bad_start",
                    f'the first message must be {{"type": "start", ...}}, got type {kind!r}',
                )
            raise ProtocolError(
                "unknown_type", f"unknown control message type {kind!r}; known: start, stop"
            )
        except ProtocolError as exc:
            code = exc.code
            if self.state == "new" and code == "bad_message":
                code = "bad_start"  # a session that cannot start is over
            return self._end([self.errors.problem(code, exc.message)])

    def _on_start(self, msg: dict[str, Any], now_s: float) -> list[Output]:
        if self.state != "new":
            return [self.errors.problem("already_started", "start was already received; ignored")]
        start = parse_start(msg, self.session_id, self.limits)
        self.start = start
        self.state = "started"
        self._rate = RateLimiter(self.limits.max_speed, self.limits.burst_s)
        self._rate.allow(0.0, now_s)
        return [start]

    def receive_bytes(self, data: bytes, now_s: float) -> list[Output]:
        """A binary (audio) message arrived at ``now_s``."""
        if self.state == "ended":
            return []
        n = len(data)
        if n > self.limits.max_frame_bytes:
            return self._end(
                [
                    self.errors.problem(
                        "too_large",
                        f"audio frame of {n} bytes exceeds the limit of "
                        f"{self.limits.max_frame_bytes} bytes; send smaller frames",
                    )
                ]
            )
        if self.start is None or self._rate is None:
            return self._end(
                [self.errors.problem("not_started", "audio before start; frame discarded")]
            )
        fmt = self.start.format
        if n == 0:
            return self._end([self.errors.problem("empty_frame", "empty audio frame; ignored")])
        if n % fmt.frame_bytes:
            self.dropped_frames += 1
            return self._end(
                [
                    self.errors.problem(
                        "odd_length",
                        f"audio frame of {n} bytes is not a whole number of {fmt.encoding} "
                        f"sample frames ({fmt.frame_bytes} bytes for {fmt.channels} channel(s)); "
                        "frame discarded",
                    )
                ]
            )
        audio_s = n / fmt.bytes_per_s
        if not self._rate.allow(audio_s, now_s):
            return self._end(
                [
                    self.errors.problem(
                        "too_fast",
                        f"audio arrives faster than {self.limits.max_speed:g}x real time "
                        f"(beyond a {self.limits.burst_s:g} s burst); send it in real time",
                    )
                ]
            )
        samples = decode(data, fmt.encoding, fmt.channels)
        self.frames += 1
        self.bytes += n
        self.samples += samples.shape[0]
        return [Audio(samples)]

    def summary(self) -> dict[str, Any]:
        """Counters of this session (for the ``stopped`` reply and logs)."""
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "audio_ms": int(math.floor(self.audio_s * 1000)),
            "dropped_frames": self.dropped_frames,
            "errors": dict(self.errors.by_code),
        }
