"""Events: every type validates against the published schema; malformed ones fail."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from streamer.core.events import (
    Alert,
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Quality,
    StreamStatus,
    load_schema,
    parse_event,
    schema_path,
    validate_event,
)

COUNTERS = {
    "windows": 12,
    "inferred": 9,
    "skipped_stale": 1,
    "skipped_silence": 2,
    "dropped_frames": 0,
    "bad_samples": 3,
}

# The example from DESIGN.md, verbatim: the published contract.
DESIGN_EXAMPLE: dict[str, Any] = {
    "type": "emotion.estimate", "v": 1, "stream_id": "mic0", "seq": 42,
    "audio_start_ms": 9500, "audio_end_ms": 12500, "speech": True,
    "label": "angry", "confidence": 0.71,
    "scores": {"neutral": 0.12, "happy": 0.08, "angry": 0.71, "sad": 0.09},
    "raw": {"neutral": 0.20, "happy": 0.05, "angry": 0.66, "sad": 0.09},
    "arousal": 0.62, "valence": -0.48,
    "tokens": {"in": 150, "kept": 98}, "latency_ms": 38.2,
    "model": {"name": "dropformer", "frontend": "wavlm-large@12", "rev": "..."},
}  # fmt: skip


def examples() -> list[Any]:
    return [
        EmotionEstimate(
            stream_id="mic0",
            seq=3,
            audio_start_ms=1000,
            audio_end_ms=4000,
            speech=True,
            label="angry",
            confidence=0.712345,
            scores={"neutral": 0.1, "angry": 0.712345, "sad": 0.187655},
            raw={"neutral": 0.2, "angry": 0.6, "sad": 0.2},
            arousal=0.5123456,
            valence=-0.41,
            tokens_in=150,
            tokens_kept=98,
            latency_ms=38.23456,
            model={"name": "dropformer", "frontend": "logmel", "rev": "abc", "random_init": True},
        ),
        EmotionTransition("call-7:caller", 4, 5000, "neutral", "angry", 0.6),
        StreamStatus("mic0", "speech", 5000, dict(COUNTERS)),
        StreamStatus("mic0", "error", 9000, {**COUNTERS, "late_results": 2}, "device vanished"),
        Alert("call-7:agent", "sustained_anger", "warning", "anger for 30 s", 31000),
        EmotionEstimate(
            stream_id="call-7.caller",
            seq=4,
            audio_start_ms=2000,
            audio_end_ms=5000,
            speech=True,
            label="sad",
            confidence=0.5,
            scores={"sad": 0.5, "fear": 0.3, "surprise": 0.2},
            raw={"sad": 0.5, "fear": 0.3, "surprise": 0.2},
            arousal=-0.2,
            valence=-0.5,
            tokens_in=150,
            tokens_kept=98,
            latency_ms=20.0,
            model={"name": "dropformer", "frontend": "whisper-base@2-3", "rev": "abc"},
            quality=Quality(-31.25, 0.001, 18.5, 3400.0, True),
        ),
        EmotionUtterance(
            stream_id="mic0",
            seq=0,
            audio_start_ms=1200,
            audio_end_ms=3900,
            label="angry",
            confidence=0.81,
            scores={"neutral": 0.09, "angry": 0.81, "sad": 0.1},
            arousal=0.6,
            valence=-0.45,
            tokens_in=135,
            tokens_kept=89,
            latency_ms=41.5,
            model={"name": "dropformer", "frontend": "logmel80", "rev": "abc"},
            truncated=False,
            quality=Quality(-22.0, 0.0, 30.0, 7800.0, False),
        ),
    ]


def test_schema_file_is_valid_draft_2020_12() -> None:
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema") and schema["$id"]
    # the five event types, daemon.status and the WebSocket server's own replies: every
    # payload that leaves the daemon has its definition
    assert [one["$ref"].rsplit("/", 1)[1] for one in schema["oneOf"]] == [
        "emotion.estimate", "emotion.transition", "emotion.utterance", "stream.status", "alert",
        "daemon.status", "hello", "subscribed", "ws.error",
    ]  # fmt: skip


def test_design_example_validates() -> None:
    validate_event(DESIGN_EXAMPLE)
    jsonschema.validate(DESIGN_EXAMPLE, load_schema())
    assert parse_event(DESIGN_EXAMPLE).to_dict() == DESIGN_EXAMPLE


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.TYPE)
def test_every_type_validates_and_round_trips(event: Any) -> None:
    d = event.to_dict()
    wire = json.loads(json.dumps(d))  # JSON-ready
    validate_event(wire)
    jsonschema.validate(wire, load_schema())  # the whole oneOf too, as a client would
    assert wire["type"] == event.TYPE and wire["v"] == 1
    assert parse_event(wire).to_dict() == d


def test_rounding() -> None:
    d = examples()[0].to_dict()
    assert d["confidence"] == 0.7123 and d["arousal"] == 0.5123 and d["latency_ms"] == 38.23
    assert d["tokens"] == {"in": 150, "kept": 98}
    assert "detail" not in examples()[2].to_dict()


def _broken(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()
MALFORMED = [
    (["arousal"], 1.5),
    (["confidence"], -0.1),
    (["scores", "angry"], 1.2),
    (["label"], _DELETE),
    (["tokens", "kept"], -1),
    (["model", "rev"], _DELETE),
    (["v"], 2),
    (["stream_id"], "a/b"),
    (["seq"], "42"),
    (["unexpected"], 1),
]


@pytest.mark.parametrize("path,value", MALFORMED, ids=lambda x: str(x))
def test_malformed_estimate_fails(path: list[str], value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_event(_broken(DESIGN_EXAMPLE, path, value))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken(DESIGN_EXAMPLE, path, value), load_schema())


def test_malformed_other_types_fail() -> None:
    status = examples()[2].to_dict()
    for path, value in [
        (["state"], "sleeping"),
        (["counters", "windows"], _DELETE),
        (["counters", "windows"], 1.5),
        (["audio_ms"], -5),
    ]:
        with pytest.raises(jsonschema.ValidationError):
            validate_event(_broken(status, path, value))
    alert = examples()[4].to_dict()
    with pytest.raises(jsonschema.ValidationError):
        validate_event(_broken(alert, ["severity"], "panic"))
    transition = examples()[1].to_dict()
    with pytest.raises(jsonschema.ValidationError):
        validate_event(_broken(transition, ["to"], _DELETE))
    with pytest.raises(jsonschema.ValidationError):
        validate_event({"type": "emotion.mood", "v": 1})
    with_quality, utterance = examples()[5].to_dict(), examples()[6].to_dict()
    for event, path, value in [
        (with_quality, ["quality", "clipping"], 1.5),
        (with_quality, ["quality", "telephone_band"], _DELETE),
        (with_quality, ["quality", "level_dbfs"], 3.0),
        (utterance, ["truncated"], _DELETE),
        (utterance, ["scores"], {}),
        (utterance, ["quality", "snr_db"], "high"),
    ]:
        with pytest.raises(jsonschema.ValidationError):
            validate_event(_broken(event, path, value))


def test_parse_event_errors_say_why() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        parse_event({"type": "nope", "v": 1})
    with pytest.raises(ValueError, match="v=2"):
        parse_event({**DESIGN_EXAMPLE, "v": 2})
    with pytest.raises(ValueError, match="raw"):
        parse_event({k: v for k, v in DESIGN_EXAMPLE.items() if k != "raw"})
