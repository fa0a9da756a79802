"""Event types the daemon publishes, as frozen dataclasses (schema version 1).

``events.schema.json`` next to this module is the published source of truth;
``to_dict`` produces objects that validate against it, ``parse_event`` turns
such an object back into a dataclass (for clients).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal

SCHEMA_VERSION = 1

StreamState = Literal["online", "speech", "silence", "offline", "error"]
Severity = Literal["info", "warning", "critical"]
STREAM_STATES: tuple[str, ...] = ("online", "speech", "silence", "offline", "error")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
COUNTER_NAMES: tuple[str, ...] = (
    "windows",
    "inferred",
    "skipped_stale",
    "skipped_silence",
    "dropped_frames",
    "bad_samples",
)
"""Counters every ``stream.status`` carries (more may follow)."""


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _scores(d: Mapping[str, float]) -> dict[str, float]:
    return {str(k): _r(v) for k, v in d.items()}


@dataclass(frozen=True)
class Quality:
    """Cheap measures of the audio an estimate or utterance was made on (``$defs/quality``)."""

    level_dbfs: float
    """RMS level in dB relative to full scale."""
    clipping: float
    """Share of samples at or above 0.999 of full scale."""
    snr_db: float
    """Estimated signal-to-noise ratio in dB."""
    bandwidth_hz: float
    """Frequency below which 99% of the spectral energy lies."""
    telephone_band: bool
    """The audio looks band-limited to telephone bandwidth."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "level_dbfs": _r(self.level_dbfs, 2),
            "clipping": _r(self.clipping),
            "snr_db": _r(self.snr_db, 2),
            "bandwidth_hz": _r(self.bandwidth_hz, 1),
            "telephone_band": bool(self.telephone_band),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Quality:
        return cls(
            d["level_dbfs"], d["clipping"], d["snr_db"], d["bandwidth_hz"], d["telephone_band"]
        )


@dataclass(frozen=True)
class EmotionEstimate:
    """``emotion.estimate``: the smoothed estimate after one window."""

    TYPE: ClassVar[str] = "emotion.estimate"
    stream_id: str
    seq: int
    audio_start_ms: int
    audio_end_ms: int
    speech: bool
    label: str
    confidence: float
    scores: dict[str, float]
    raw: dict[str, float]
    arousal: float
    valence: float
    tokens_in: int
    tokens_kept: int
    latency_ms: float
    model: dict[str, Any]
    importance: dict[str, Any] | None = None
    """Optional: where in the window the model listened (``streamer.core.importance``)."""
    quality: Quality | None = None
    """Optional: quality measures of this window's audio."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (probabilities to 4 decimals, latency to 0.01 ms);
        ``importance`` only when set."""
        d: dict[str, Any] = {
            "type": self.TYPE,
            "v": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "seq": int(self.seq),
            "audio_start_ms": int(self.audio_start_ms),
            "audio_end_ms": int(self.audio_end_ms),
            "speech": bool(self.speech),
            "label": self.label,
            "confidence": _r(self.confidence),
            "scores": _scores(self.scores),
            "raw": _scores(self.raw),
            "arousal": _r(self.arousal),
            "valence": _r(self.valence),
            "tokens": {"in": int(self.tokens_in), "kept": int(self.tokens_kept)},
            "latency_ms": _r(self.latency_ms, 2),
            "model": dict(self.model),
        }
        if self.importance is not None:
            d["importance"] = dict(self.importance)
        if self.quality is not None:
            d["quality"] = self.quality.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmotionEstimate:
        """Inverse of :meth:`to_dict`."""
        return cls(
            stream_id=d["stream_id"],
            seq=d["seq"],
            audio_start_ms=d["audio_start_ms"],
            audio_end_ms=d["audio_end_ms"],
            speech=d["speech"],
            label=d["label"],
            confidence=d["confidence"],
            scores=dict(d["scores"]),
            raw=dict(d["raw"]),
            arousal=d["arousal"],
            valence=d["valence"],
            tokens_in=d["tokens"]["in"],
            tokens_kept=d["tokens"]["kept"],
            latency_ms=d["latency_ms"],
            model=dict(d["model"]),
            importance=dict(d["importance"]) if d.get("importance") is not None else None,
            quality=Quality.from_dict(d["quality"]) if d.get("quality") is not None else None,
        )


@dataclass(frozen=True)
class EmotionUtterance:
    """``emotion.utterance``: the emotion of one utterance, emitted when the gate closes a speech
    segment; the model ran once on the whole utterance (its last ``max`` seconds when ``truncated``)."""

    TYPE: ClassVar[str] = "emotion.utterance"
    stream_id: str
    seq: int
    """Utterance number in this stream."""
    audio_start_ms: int
    audio_end_ms: int
    label: str
    confidence: float
    scores: dict[str, float]
    """The model's probabilities for the utterance (calibrated, not smoothed)."""
    arousal: float
    valence: float
    tokens_in: int
    tokens_kept: int
    latency_ms: float
    model: dict[str, Any]
    truncated: bool = False
    quality: Quality | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``quality`` only when set."""
        d: dict[str, Any] = {
            "type": self.TYPE,
            "v": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "seq": int(self.seq),
            "audio_start_ms": int(self.audio_start_ms),
            "audio_end_ms": int(self.audio_end_ms),
            "label": self.label,
            "confidence": _r(self.confidence),
            "scores": _scores(self.scores),
            "arousal": _r(self.arousal),
            "valence": _r(self.valence),
            "tokens": {"in": int(self.tokens_in), "kept": int(self.tokens_kept)},
            "latency_ms": _r(self.latency_ms, 2),
            "model": dict(self.model),
            "truncated": bool(self.truncated),
        }
        if self.quality is not None:
            d["quality"] = self.quality.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmotionUtterance:
        """Inverse of :meth:`to_dict`."""
        return cls(
            stream_id=d["stream_id"],
            seq=d["seq"],
            audio_start_ms=d["audio_start_ms"],
            audio_end_ms=d["audio_end_ms"],
            label=d["label"],
            confidence=d["confidence"],
            scores=dict(d["scores"]),
            arousal=d["arousal"],
            valence=d["valence"],
            tokens_in=d["tokens"]["in"],
            tokens_kept=d["tokens"]["kept"],
            latency_ms=d["latency_ms"],
            model=dict(d["model"]),
            truncated=bool(d["truncated"]),
            quality=Quality.from_dict(d["quality"]) if d.get("quality") is not None else None,
        )


@dataclass(frozen=True)
class EmotionTransition:
    """``emotion.transition``: the smoothed label changed at ``audio_ms``.

    The stream's first label is announced with ``from_label=None`` (``"from": null``),
    so the retained MQTT ``state`` topic holds the current label from the start.
    """

    TYPE: ClassVar[str] = "emotion.transition"
    stream_id: str
    seq: int
    audio_ms: int
    from_label: str | None
    to_label: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys ``from`` and ``to`` hold the labels)."""
        return {
            "type": self.TYPE,
            "v": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "seq": int(self.seq),
            "audio_ms": int(self.audio_ms),
            "from": self.from_label,
            "to": self.to_label,
            "confidence": _r(self.confidence),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmotionTransition:
        """Inverse of :meth:`to_dict`."""
        return cls(d["stream_id"], d["seq"], d["audio_ms"], d["from"], d["to"], d["confidence"])


@dataclass(frozen=True)
class StreamStatus:
    """``stream.status``: the stream's state and cumulative counters."""

    TYPE: ClassVar[str] = "stream.status"
    stream_id: str
    state: StreamState
    audio_ms: int
    counters: dict[str, int] = field(default_factory=dict)
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``detail`` only when set."""
        d: dict[str, Any] = {
            "type": self.TYPE,
            "v": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "state": self.state,
            "audio_ms": int(self.audio_ms),
            "counters": {k: int(v) for k, v in self.counters.items()},
        }
        if self.detail is not None:
            d["detail"] = self.detail
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamStatus:
        """Inverse of :meth:`to_dict`."""
        return cls(d["stream_id"], d["state"], d["audio_ms"], dict(d["counters"]), d.get("detail"))


@dataclass(frozen=True)
class Alert:
    """``alert``: something a supervisor should look at.

    The optional fields describe the estimate that raised it (an alert rule
    fills them in): its ``seq``, smoothed ``label`` and ``confidence``,
    ``arousal``/``valence``, and where the episode began (``episode_start_ms``).
    """

    TYPE: ClassVar[str] = "alert"
    stream_id: str
    kind: str
    severity: Severity
    message: str
    audio_ms: int
    seq: int | None = None
    label: str | None = None
    confidence: float | None = None
    arousal: float | None = None
    valence: float | None = None
    episode_start_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the optional fields only when set."""
        d: dict[str, Any] = {
            "type": self.TYPE,
            "v": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "audio_ms": int(self.audio_ms),
        }
        for key in ("seq", "episode_start_ms"):
            if getattr(self, key) is not None:
                d[key] = int(getattr(self, key))
        if self.label is not None:
            d["label"] = self.label
        for key in ("confidence", "arousal", "valence"):
            if getattr(self, key) is not None:
                d[key] = _r(getattr(self, key))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict`."""
        return cls(
            d["stream_id"], d["kind"], d["severity"], d["message"], d["audio_ms"],
            d.get("seq"), d.get("label"), d.get("confidence"), d.get("arousal"),
            d.get("valence"), d.get("episode_start_ms"),
        )  # fmt: skip


Event = EmotionEstimate | EmotionUtterance | EmotionTransition | StreamStatus | Alert
EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (EmotionEstimate, EmotionUtterance, EmotionTransition, StreamStatus, Alert)
}


def parse_event(d: Mapping[str, Any]) -> Event:
    """Turn a received JSON object into its dataclass.

    Raises ValueError naming the problem for an unknown ``type``, another
    schema version or a missing key. (For full checking use :func:`validate_event`.)
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"an event must be a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; expected one of {sorted(EVENT_TYPES)}")
    if d.get("v") != SCHEMA_VERSION:
        raise ValueError(f"event {kind} has schema version v={d.get('v')!r}; this code reads v=1")
    try:
        return EVENT_TYPES[kind].from_dict(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"event {kind} is missing or has a malformed field: {e}") from e


def schema_path() -> pathlib.Path:
    """Path of the published JSON Schema (draft 2020-12)."""
    return pathlib.Path(__file__).with_name("events.schema.json")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema as a dict (read once)."""
    schema: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
    return schema


def validate_event(d: Mapping[str, Any]) -> None:
    """Validate ``d`` against the schema with ``jsonschema``.

    Raises ``jsonschema.ValidationError`` when ``d`` does not match, and
    ImportError (saying what to install) when jsonschema is missing.
    """
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - dev dependency
        raise ImportError("validate_event needs jsonschema: pip install jsonschema") from e
    schema = load_schema()
    # Validate against the one definition the type names: its error messages
    # are far clearer than oneOf's "is not valid under any of the given schemas".
    kind = d.get("type") if isinstance(d, Mapping) else None
    if isinstance(kind, str) and kind in schema["$defs"] and kind in EVENT_TYPES:
        sub = {"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]}
        jsonschema.Draft202012Validator(sub).validate(dict(d))
    else:
        jsonschema.Draft202012Validator(schema).validate(d)
