"""Property-based tests of every parser of outside input (issue 11): config files and
``--set``, WebSocket control messages, /ingest and Twilio messages, WAV headers, and
what the robot client reads from MQTT or the daemon's WebSocket.

For each: no crash, no hang, and every rejection is the parser's typed error (or its
typed ``Problem``). A few hundred cases each under CI; 10,000 each in the benchmark
run: ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``; BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticUndefined

from clients.robot.links import MAX_MESSAGE_BYTES, WebSocketLink
from clients.robot.rules import RobotRule, RuleEngine
from dropformer.configio import ConfigError, apply_overrides, parse_yaml, validate
from dropformer.errors import AudioError
from streamer.config import DaemonConfig
from streamer.core.control import ControlError, Subscribe, parse_control
from streamer.core.ingest import (
    FATAL,
    NON_FATAL,
    Audio,
    IngestLimits,
    IngestProtocol,
    Problem,
    Start,
    Stop,
)
from streamer.core.jsonguard import MessageError, loads_object
from streamer.core.twilio import CallStart, CallStop, TrackAudio, TrackNames, TwilioProtocol
from streamer.sources.base import MAX_BLOCK_BYTES
from streamer.sources.file import FileSource, block_frames
from tests.streamer.test_startup_checks import key_exists

PROBLEM_CODES = set(FATAL) | set(NON_FATAL) | {"too_many_errors"}

# -- generic JSON-ish input ------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
    ),
    max_leaves=20,
)


def deep(n: int, opener: str = "[") -> str:
    closer = {"[": "]", "{": "}"}[opener]
    return opener * n + closer * n if opener == "[" else '{"a":' * n + "1" + "}" * n


raw_text = (
    st.text(max_size=200)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    | st.integers(1, 100_000).map(deep)
    | st.integers(1, 5_000).map(lambda n: deep(n, "{"))
)


def mutate(doc: dict[str, Any]) -> st.SearchStrategy[str | bytes]:
    """The message as JSON, or cut short, or with junk, or as bytes."""
    text = json.dumps(doc)
    return st.sampled_from(
        [text, text[: len(text) // 2], text + "}", text.encode(), text.replace('"', "'")]
    )


def messages(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[str | bytes]:
    """Realistic messages with any field left out or replaced by anything."""
    doc = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.builds(lambda d, e: {**d, **e}, doc, extra).flatmap(mutate) | raw_text


# -- config files and --set ------------------------------------------------------------
def config_tree(model: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Documents shaped like ``model``: known keys with plausible and wild values."""
    from pydantic import BaseModel

    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = [
            a
            for a in getattr(ann, "__args__", (ann,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if sub and depth < 3:
            fields[name] = config_tree(sub[0], depth + 1) | json_values
        else:
            plausible = (
                f.default if f.default is not None and f.default is not PydanticUndefined else None
            )
            fields[name] = st.just(plausible) if plausible is not None else scalars
            fields[name] = fields[name] | scalars | json_values
    return st.fixed_dictionaries({}, optional=fields)


stream_docs = st.fixed_dictionaries(
    {"id": st.text(max_size=10) | st.just("s1")},
    optional={
        "source": st.fixed_dictionaries(
            {},
            optional={
                "kind": st.sampled_from(["file", "microphone", "x"]) | scalars,
                "path": scalars,
                "block_ms": scalars,
                "device": json_values,
                "sample_rate_hz": scalars,
                "channels": scalars,
            },
        ),
        "restart_s": scalars,
    },
)
config_docs = config_tree(DaemonConfig).flatmap(
    lambda d: st.builds(
        lambda streams: {**d, "streams": streams} if streams is not None else d,
        st.none() | st.lists(stream_docs, max_size=3) | json_values,
    )
)


def check_config(raw: dict[str, Any]) -> None:
    try:
        validate(DaemonConfig, raw)
    except ConfigError as exc:
        for key in (w.split("=", 1)[0] for w in str(exc).split("--set ")[1:]):
            assert key_exists(DaemonConfig, key), (key, str(exc))  # suggestions are keys that exist


@given(config_docs)
def test_config_documents(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        raw = parse_yaml(text)
    except ConfigError:
        return
    check_config(raw)


@given(
    st.binary(max_size=300)
    | st.text(max_size=300)
    | st.integers(1, 3000).map(lambda n: "a:\n" + "  " * 0 + "[" * n)
)
@example(b"a: &a [1]\nb: *a\nc: {x: 1, x: 2}\n")
@example("windowing:\n  hop_s: 0.5\n  hop_s: 2\n")
def test_config_files_of_any_bytes(data: bytes | str) -> None:
    try:
        raw = parse_yaml(data)
    except ConfigError:
        return
    check_config(raw)


@given(
    st.lists(
        st.text(max_size=40)
        | st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(
                ["windowing.window_s", "streams.0.id", "streams.9.x", "publish", "a..b", "", "gate"]
            ),
            st.text(max_size=30),
        ),
        max_size=4,
    )
)
def test_set_overrides(items: list[str]) -> None:
    try:
        raw = apply_overrides({"streams": [{"id": "demo"}]}, items)
    except ConfigError:
        return
    check_config(raw)


# -- the event WebSocket's control messages ----------------------------------------------
@given(
    messages(
        {
            "type": st.sampled_from(["subscribe", "hello", "Subscribe"]),
            "streams": st.lists(st.text(max_size=5), max_size=3) | st.just("*"),
        }
    )
)
@example("[" * 60_000 + "]" * 60_000)
def test_websocket_control_messages(raw: str | bytes) -> None:
    try:
        sub = parse_control(raw, max_bytes=4096)
    except ControlError as exc:
        assert exc.code in ("bad_json", "not_object", "bad_request")
        return
    except MessageError as exc:
        assert exc.code in ("too_large", "too_deep") and exc.close_code in (1008, 1009)
        return
    assert isinstance(sub, Subscribe)
    assert sub.streams is None or all(isinstance(s, str) for s in sub.streams)


# -- /ingest ------------------------------------------------------------------------
ingest_start = {
    "type": st.just("start"),
    "v": st.just(1),
    "stream_id": st.sampled_from(["s1", "a b", ""]),
    "sample_rate_hz": st.sampled_from([8000, 16000, 48000, 7999, 10**9]),
    "encoding": st.sampled_from(["pcm_s16le", "pcm_f32le", "mulaw", "opus"]),
    "channels": st.integers(0, 10),
    "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
}
ingest_items = st.lists(
    messages(ingest_start)
    | messages({"type": st.sampled_from(["stop", "pause"])})
    | st.binary(max_size=3000)
    | st.integers(0, 20_000).map(lambda n: b"\x7f\xff" * n),
    max_size=12,
)


def check_outputs(outs: list[Any], kinds: tuple[type, ...]) -> None:
    for out in outs:
        assert isinstance(out, kinds), out
        if isinstance(out, Problem):
            assert out.code in PROBLEM_CODES and out.message
        if isinstance(out, (Audio, TrackAudio)):
            assert out.samples.dtype == np.float32 and np.all(np.abs(out.samples) <= 1.0)


@given(ingest_items, st.lists(st.floats(0, 0.5), min_size=12, max_size=12))
def test_ingest_sessions(items: list[str | bytes], gaps: list[float]) -> None:
    proto = IngestProtocol(
        "sess", IngestLimits(max_frame_bytes=8192, max_control_bytes=1024, max_errors=5)
    )
    now = 0.0
    for item, gap in zip(items, gaps):
        now += gap
        ended = proto.state == "ended"
        outs = (
            proto.receive_bytes(item, now)
            if isinstance(item, bytes)
            else proto.receive_text(item, now)
        )
        check_outputs(outs, (Start, Audio, Stop, Problem))
        if ended:
            assert outs == []


# -- Twilio Media Streams ---------------------------------------------------------------
def twilio_media(track: str, payload: bytes) -> dict[str, Any]:
    return {
        "event": "media",
        "media": {"track": track, "payload": base64.b64encode(payload).decode()},
    }


twilio_start = {
    "event": st.just("start"),
    "start": st.fixed_dictionaries(
        {},
        optional={
            "callSid": st.sampled_from(["CA1", "CA 1", ""]),
            "streamSid": st.sampled_from(["MZ1", "x"]),
            "tracks": st.lists(st.sampled_from(["inbound", "outbound", "both"]), max_size=3),
            "mediaFormat": st.fixed_dictionaries(
                {},
                optional={
                    "encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"]),
                    "sampleRate": st.sampled_from([8000, 16000, 0]),
                    "channels": st.integers(0, 3),
                },
            ),
            "customParameters": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
        },
    ),
}
twilio_items = st.lists(
    messages(twilio_start)
    | st.builds(
        twilio_media, st.sampled_from(["inbound", "outbound", "x"]), st.binary(max_size=400)
    ).flatmap(mutate)
    | messages(
        {
            "event": st.sampled_from(["media", "stop", "mark", "dtmf", "connected", "closed"]),
            "media": st.fixed_dictionaries(
                {}, optional={"payload": st.text(max_size=20), "track": st.text(max_size=8)}
            ),
        }
    )
    | st.binary(max_size=50),
    max_size=12,
)


@given(twilio_items, st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_twilio_calls(items: list[str | bytes], agent: bool) -> None:
    proto = TwilioProtocol(
        IngestLimits(max_control_bytes=2048, max_errors=5), TrackNames(analyse_agent=agent)
    )
    for i, item in enumerate(items):
        ended = proto.state == "ended"
        outs = (
            proto.receive_bytes(item, i * 0.02)
            if isinstance(item, bytes)
            else proto.receive_text(item, i * 0.02)
        )
        check_outputs(outs, (CallStart, TrackAudio, CallStop, Problem))
        if ended:
            assert outs == []


# -- WAV headers ---------------------------------------------------------------------
def wav(
    fmt_tag: int,
    channels: int,
    rate: int,
    bits: int,
    align: int,
    data_len: int,
    data: bytes,
    cut: int,
) -> bytes:
    fmt = struct.pack(
        "<HHIIHH",
        fmt_tag & 0xFFFF,
        channels & 0xFFFF,
        rate & 0xFFFFFFFF,
        (rate * max(align, 0)) & 0xFFFFFFFF,
        align & 0xFFFF,
        bits & 0xFFFF,
    )
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_len & 0xFFFFFFFF)
        + data
    )
    whole = b"RIFF" + struct.pack("<I", len(body)) + body
    return whole[:cut] if cut else whole


wav_files = st.builds(
    wav,
    st.sampled_from([1, 3, 6, 7, 0xFFFE]) | st.integers(0, 0xFFFF),
    st.sampled_from([1, 2, 64, 65, 1024]) | st.integers(0, 0xFFFF),
    st.sampled_from([8000, 16000, 48000, 384_000, 768_000, 999]) | st.integers(0, 2**32 - 1),
    st.sampled_from([8, 16, 24, 32, 64]) | st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=2000),
    st.integers(0, 60),
) | st.binary(max_size=300).map(lambda b: b"RIFF" + b)

_TMP = Path(tempfile.mkdtemp(prefix="fuzz-wav-"))


async def _read(path: Path, block_ms: float) -> int:
    n = 0
    async with FileSource(path, "fuzz", realtime=False, block_ms=block_ms) as src:
        assert src._file is not None
        f = src._file
        assert block_frames(f.samplerate, f.channels, block_ms) * f.channels * 4 <= MAX_BLOCK_BYTES
        async for frame in src:
            assert frame.dtype == np.float32 and frame.ndim == 1
            n += 1
            if n >= 3:
                break
    return n


@given(wav_files, st.sampled_from([1.0, 100.0, 10_000.0]))
def test_wav_headers(data: bytes, block_ms: float) -> None:
    path = _TMP / "h.wav"
    path.write_bytes(data)
    try:
        asyncio.run(_read(path, block_ms))
    except AudioError as exc:
        assert "h.wav" in str(exc)


# -- what the robot client reads ---------------------------------------------------------
estimate_fields = {
    "type": st.sampled_from(
        [
            "emotion.estimate",
            "emotion.transition",
            "stream.status",
            "daemon.status",
            "hello",
            "alert",
        ]
    ),
    "v": st.just(1),
    "stream_id": st.sampled_from(["head_mic", ""]) | scalars,
    "seq": st.integers(-5, 10) | scalars,
    "audio_start_ms": st.integers(0, 10_000) | scalars,
    "audio_end_ms": st.integers(0, 10_000) | scalars,
    "audio_ms": st.integers(0, 10_000) | scalars,
    "speech": st.booleans() | scalars,
    "label": st.sampled_from(["angry", "happy"]) | scalars,
    "confidence": st.floats(0, 1) | scalars,
    "scores": json_values,
    "raw": json_values,
    "arousal": st.floats(-1, 1) | scalars,
    "valence": st.floats(-1, 1) | scalars,
    "tokens": json_values,
    "latency_ms": scalars,
    "model": json_values,
    "state": st.sampled_from(["online", "offline", "error", "speech"]) | scalars,
    "from": scalars,
    "to": st.sampled_from(["angry", "sad"]) | scalars,
    "last_status": json_values,
    "last_estimate": json_values,
    "transitions": json_values,
}


@given(st.lists(messages(estimate_fields), max_size=8))
@example(['{"type": "emotion.estimate", "v": 1, "seq": 1, "audio_end_ms": 1e400}'])
@example(['{"stream_id": null, "type": "hello", "transitions": true}'])  # found by the fuzz run
def test_robot_client_payloads(payloads: list[str | bytes]) -> None:
    engine = RuleEngine(
        [RobotRule(name="calm", label="angry", min_confidence=0.5, min_duration_ms=500)]
    )
    link = WebSocketLink(
        "ws://127.0.0.1:1/ws",
        on_event=lambda e, r: engine.feed(e, replayed=r),
        on_outage=lambda: None,
    )
    for raw in payloads:
        try:
            doc = loads_object(raw, max_bytes=MAX_MESSAGE_BYTES)
        except MessageError as exc:
            assert exc.code in ("too_large", "too_deep", "bad_json", "not_object")
            continue
        if doc.get("type") == "hello":
            link._hello(doc)  # the WebSocket's replay of where things stand
        else:
            engine.feed(doc)  # malformed events are counted (stats.malformed), never raised
    assert engine.stats.events >= 0


# -- POST /v1/analyze request heads, analyse manifests ----------------------------------
header_lines = st.lists(
    st.tuples(st.text(max_size=20), st.text(max_size=40)).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    max_size=8,
)


@given(
    st.binary(max_size=400)
    | st.builds(
        lambda method, target, lines: "\r\n".join([f"{method} {target} HTTP/1.1", *lines]).encode(
            "utf-8", "surrogatepass"
        ),
        st.sampled_from(["POST", "GET", "P\x00ST", ""]),
        st.text(max_size=40),
        header_lines,
    )
)
@example(b"POST /v1/analyze HTTP/1.1\r\nContent-Length: 12\r\nHost: a")
def test_post_request_heads(head: bytes) -> None:
    from streamer.publishers.http import _parse_head

    try:
        method, target, headers = _parse_head(head)
    except ValueError:
        return
    assert isinstance(method, str) and isinstance(target, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.raw_items())


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode), st.booleans())
@example(b"path,x\n,1\n", False)
@example(b'{"path": ".."}\n', True)
def test_analyse_manifests(data: bytes, jsonl: bool) -> None:
    from dropformer.errors import DataError
    from streamer.analysis import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("m.jsonl" if jsonl else "m.csv")
        path.write_bytes(data)
        try:
            rows = read_manifest(path)
        except DataError:
            return
        assert rows and all(isinstance(extra, dict) for _, _, extra in rows)
