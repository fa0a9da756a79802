"""The whole daemon on real speech: file replay, real WebSocket clients, bad input
isolated per stream, stale windows skipped and counted, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from dropformer.configio import validate
from streamer.config import DaemonConfig
from streamer.core.events import validate_event
from streamer.core.windower import expected_window_count
from streamer.daemon import Daemon

DATA = Path(__file__).resolve().parents[1] / "data"
SPEECH = [
    DATA / "emodb" / "03a01Wa.wav",
    DATA / "emodb" / "03a01Fa.wav",
    DATA / "emodb" / "03a02Ta.wav",
]


def long_speech(tmp_path: Path) -> Path:
    """About 7 s of real speech: three EmoDB utterances back to back."""
    audio = np.concatenate([sf.read(p, dtype="float32")[0] for p in SPEECH])
    out = tmp_path / "three.wav"
    sf.write(out, audio, 16000)
    return out


def config(
    tmp_path: Path, checkpoint: Path, streams: list[dict[str, Any]], **extra: Any
) -> DaemonConfig:
    raw: dict[str, Any] = {
        "model": {"checkpoint": str(checkpoint)},
        "streams": streams,
        "gate": {"kind": "none"},
        "publish": {
            "websocket": {"port": 0},
            "jsonl": {"enabled": True, "path": str(tmp_path / "events.jsonl")},
        },
    }
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return validate(DaemonConfig, raw)


def events_of(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


async def test_file_replay_counts_and_schema(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = long_speech(tmp_path)
    n_samples = sf.info(wav).frames
    cfg = config(
        tmp_path,
        tiny_checkpoint,
        [{"id": "file0", "source": {"path": str(wav), "realtime": False}}],
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 120)
    events = events_of(tmp_path)
    for ev in events:
        validate_event(ev)
    estimates = [e for e in events if e["type"] == "emotion.estimate"]
    w = cfg.windowing
    assert len(estimates) == expected_window_count(
        n_samples, 16000, w.window_s, w.hop_s, w.first_window, w.min_window_s
    )
    assert [e["seq"] for e in estimates] == list(range(len(estimates)))
    assert estimates[0]["audio_start_ms"] == 0 and estimates[0]["audio_end_ms"] == 3000
    assert estimates[1]["audio_start_ms"] == 1000
    for e in estimates:
        assert abs(sum(e["scores"].values()) - 1) < 1e-3 and abs(sum(e["raw"].values()) - 1) < 1e-3
        assert e["tokens"]["kept"] < e["tokens"]["in"]  # the Token Dropout Module ran
        assert -1 <= e["arousal"] <= 1 and -1 <= e["valence"] <= 1
        assert e["model"]["frontend"] == "logmel80" and e["model"]["random_init"] is False
    statuses = [e["state"] for e in events if e["type"] == "stream.status"]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    assert events[-1]["counters"]["inferred"] == len(estimates)


async def test_websocket_clients_get_the_same_events(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = long_speech(tmp_path)
    cfg = config(
        tmp_path, tiny_checkpoint, [{"id": "a", "source": {"path": str(wav), "realtime": True}}]
    )
    got: dict[str, list[dict[str, Any]]] = {"c1": [], "c2": []}
    async with Daemon(cfg) as daemon:
        url = f"ws://127.0.0.1:{daemon.websocket.port}/ws"

        async def client(name: str) -> None:
            async with connect(url) as ws:
                async for msg in ws:
                    ev = json.loads(msg)
                    got[name].append(ev)
                    if ev["type"] == "stream.status" and ev["state"] == "offline":
                        return

        clients = [asyncio.create_task(client(n)) for n in got]
        await asyncio.sleep(0.3)  # both connected before audio starts
        await asyncio.wait_for(daemon.run(), 60)
        await asyncio.wait_for(asyncio.gather(*clients), 10)
    jsonl = [e for e in events_of(tmp_path) if e["type"] == "emotion.estimate"]
    for name in got:
        est = [e for e in got[name] if e["type"] == "emotion.estimate"]
        assert [e["seq"] for e in est] == [e["seq"] for e in jsonl] and len(est) >= 3
        assert est[-1]["scores"] == jsonl[-1]["scores"]
        assert all(e["latency_ms"] > 0 for e in est)


async def test_bad_streams_do_not_stop_good_ones(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = long_speech(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    nan_wav = tmp_path / "nan.wav"
    audio, _ = sf.read(SPEECH[0], dtype="float32")
    audio[1000:1100] = np.nan
    sf.write(nan_wav, audio, 16000, subtype="FLOAT")
    streams = [
        {"id": "good", "source": {"path": str(wav), "realtime": False}},
        {"id": "text", "source": {"path": str(text), "realtime": False}},
        {"id": "missing", "source": {"path": str(tmp_path / "nope.wav"), "realtime": False}},
        {"id": "nan", "source": {"path": str(nan_wav), "realtime": False}},
    ]
    cfg = config(tmp_path, tiny_checkpoint, streams, windowing={"first_window": "early"})
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 120)
    events = events_of(tmp_path)
    final = {e["stream_id"]: e for e in events if e["type"] == "stream.status"}
    assert final["good"]["state"] == "offline" and final["good"]["counters"]["inferred"] >= 4
    assert final["text"]["state"] == "error" and "cannot be decoded" in final["text"]["detail"]
    assert final["missing"]["state"] == "error" and "nope.wav" in final["missing"]["detail"]
    assert final["nan"]["state"] == "offline" and final["nan"]["counters"]["bad_samples"] == 100
    nan_estimates = [
        e for e in events if e["type"] == "emotion.estimate" and e["stream_id"] == "nan"
    ]
    assert nan_estimates and all(
        np.isfinite(list(e["scores"].values())).all() for e in nan_estimates
    )


async def test_stale_windows_are_skipped_and_counted(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = long_speech(tmp_path)
    # Windows become stale after 1 microsecond: the worker must skip every one and say so.
    cfg = config(
        tmp_path,
        tiny_checkpoint,
        [{"id": "late", "source": {"path": str(wav), "realtime": True, "block_ms": 500}}],
        worker={"stale_after_s": 1e-6, "max_wait_ms": 5},
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 60)
        assert daemon.health()["worker"]["skipped_stale"] >= 4
    final = [e for e in events_of(tmp_path) if e["type"] == "stream.status"][-1]
    assert final["counters"]["skipped_stale"] >= 4 and final["counters"]["inferred"] == 0
    assert not [e for e in events_of(tmp_path) if e["type"] == "emotion.estimate" and e["speech"]]


def test_sigterm_shuts_down_gracefully(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = long_speech(tmp_path)
    jsonl = tmp_path / "events.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "streamer.cli",
        "run",
        "--set",
        f"model.checkpoint={tiny_checkpoint}",
        "--set",
        "publish.websocket.port=0",
        "--set",
        "publish.jsonl.enabled=true",
        "--set",
        f"publish.jsonl.path={jsonl}",
        "--set",
        f"streams=[{{id: a, source: {{path: {wav}, loop: true}}}}, {{id: b, source: {{path: {wav}, loop: true}}}}]",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if jsonl.exists() and '"emotion.estimate"' in jsonl.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    last = {e["stream_id"]: e for e in lines if e["type"] == "stream.status"}
    assert last["a"]["state"] == "offline" and last["b"]["state"] == "offline"
    assert any(e["type"] == "emotion.estimate" for e in lines)


@pytest.mark.timeout(120)
async def test_random_init_fallback_is_loud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("streamer.engine.bundled_checkpoint", lambda: None)
    wav = long_speech(tmp_path)
    raw = {
        "streams": [{"id": "r", "source": {"path": str(wav), "realtime": False}}],
        "gate": {"kind": "none"},
        "publish": {
            "websocket": {"enabled": False},
            "jsonl": {"enabled": True, "path": str(tmp_path / "events.jsonl")},
        },
    }
    async with Daemon(validate(DaemonConfig, raw)) as daemon:
        await daemon.run()
    assert "RANDOMLY INITIALISED" in caplog.text
    est = [e for e in events_of(tmp_path) if e["type"] == "emotion.estimate"]
    assert est and all(e["model"]["random_init"] is True for e in est)


async def test_status_heartbeat_carries_fresh_counters(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    wav = long_speech(tmp_path)
    cfg = config(
        tmp_path,
        tiny_checkpoint,
        [{"id": "hb", "source": {"path": str(wav), "realtime": True}}],
        status_interval_s=0.5,
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 60)
    statuses = [e for e in events_of(tmp_path) if e["type"] == "stream.status"]
    speech_beats = [e for e in statuses if e["state"] == "speech"]
    assert len(speech_beats) >= 4  # one state change plus heartbeats every 0.5 s of a 5.5 s stream
    inferred = [e["counters"]["inferred"] for e in speech_beats]
    assert inferred == sorted(inferred) and inferred[-1] > inferred[0]


async def test_every_websocket_message_validates(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The hello, the answers to a subscribe and to a bad message, and every event, against
    the published schema (issue 11: every payload that leaves the daemon validates)."""
    wav = long_speech(tmp_path)
    cfg = config(
        tmp_path,
        tiny_checkpoint,
        [{"id": "a", "source": {"path": str(wav), "realtime": True}}],
        status_interval_s=0.5,
    )
    got: list[dict[str, Any]] = []
    async with Daemon(cfg) as daemon:
        async with connect(f"ws://127.0.0.1:{daemon.websocket.port}/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": ["a"]}))
            await ws.send(json.dumps({"type": "hello?"}))
            runner = asyncio.create_task(daemon.run())
            async for msg in ws:
                got.append(json.loads(msg))
                if got[-1].get("state") == "offline":
                    break
            await asyncio.wait_for(runner, 60)
    kinds = {m["type"] for m in got}
    assert {"hello", "subscribed", "error", "emotion.estimate", "stream.status"} <= kinds
    for m in got + events_of(tmp_path):
        validate_event(m)
    status = [m for m in got if m["type"] == "stream.status"][-1]
    assert status["counters"]["lost_websocket"] == 0 and status["counters"]["lost_jsonl"] == 0
