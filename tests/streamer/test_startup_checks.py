"""No value that passes validation breaks the daemon (issue 11): windows the model cannot
take are refused at start-up, a run whose every stream failed exits non-zero, crafted
WAV headers are refused and bounded, config errors suggest keys that exist, every
subcommand's help shows its own arguments, a microphone restart keeps seq and time."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from pydantic import BaseModel

from dropformer.configio import load_config, user_loc, validate
from dropformer.errors import AudioError, ConfigError
from streamer.cli import SUBCOMMANDS
from streamer.commands.run import DEFAULTS
from streamer.config import DaemonConfig
from streamer.core.windower import expected_window_count
from streamer.daemon import Daemon
from streamer.sources.file import FileSource, block_frames
from tests.fixtures.network import Tap, eventually
from tests.fixtures.services import VirtualMic

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"


def speech(tmp_path: Path, *names: str, silence_s: float = 0.0) -> Path:
    audio = np.concatenate(
        [sf.read(DATA / n, dtype="float32")[0] for n in names]
        + [np.zeros(int(silence_s * 16000), np.float32)]
    )
    out = tmp_path / "speech.wav"
    sf.write(out, audio, 16000)
    return out


def daemon_cfg(checkpoint: Path | str, streams: list[dict[str, Any]], *sets: str) -> DaemonConfig:
    base = [
        f"model.checkpoint={checkpoint}",
        "gate.kind=none",
        "publish.websocket.port=0",
        "status_interval_s=null",
    ]
    raw = load_config(None, base + list(sets))
    raw["streams"] = streams
    return validate(DaemonConfig, raw)


async def test_windows_the_model_cannot_take_are_refused_at_start_up(tmp_path: Path) -> None:
    wav = speech(tmp_path, "03a01Wa.wav")
    cfg = daemon_cfg(
        "emodb_logmel",
        [{"id": "a", "source": {"path": str(wav), "realtime": False}}],
        "windowing.window_s=0.02",
        "windowing.min_window_s=0.02",
        "windowing.hop_s=0.02",
    )
    with pytest.raises(ConfigError) as err:
        async with Daemon(cfg):
            pass
    text = str(err.value)
    assert "windowing.min_window_s=0.02 s" in text and "logmel80" in text
    need = float(re.search(r"at least ([0-9.]+) s", text).group(1))  # type: ignore[union-attr]
    assert 0.02 < need < 0.1
    # the shortest window it names works: every window is analysed
    cfg = daemon_cfg(
        "emodb_logmel",
        [{"id": "a", "source": {"path": str(wav), "realtime": False}}],
        f"windowing.window_s={need}",
        f"windowing.min_window_s={need}",
        f"windowing.hop_s={need}",
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 120)
        counters = daemon.cores["a"].counters
    assert counters["inferred"] == counters["windows"] > 20 and counters["inference_errors"] == 0


async def test_utterances_the_model_cannot_take_are_refused_at_start_up(tmp_path: Path) -> None:
    wav = speech(tmp_path, "03a01Wa.wav")
    streams = [{"id": "a", "source": {"path": str(wav), "realtime": False}}]
    cfg = daemon_cfg("emodb_logmel", streams, "utterance.min_s=0.02")
    with pytest.raises(ConfigError) as err:
        async with Daemon(cfg):
            pass
    assert "utterance.min_s=0.02 s" in str(err.value)
    assert "set utterance.min_s to at least" in str(err.value)


async def test_a_neutral_label_the_model_lacks_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = daemon_cfg(
        tiny_checkpoint,
        [{"id": "a", "source": {"path": str(speech(tmp_path, "03a01Wa.wav"))}}],
        "smoothing.neutral_label=calm",
    )
    with pytest.raises(
        ConfigError, match=r"smoothing.neutral_label='calm' is not a label of the model"
    ):
        async with Daemon(cfg):
            pass


def test_every_stream_failing_exits_non_zero_saying_why(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 50)
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run", "--set", f"model.checkpoint={tiny_checkpoint}",
         "--set", "publish.websocket.port=0",
         "--set", f"streams=[{{id: gone, source: {{path: {tmp_path}/nope.wav}}}}, {{id: text, source: {{path: {text}}}}}]"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no stream produced any audio" in last and "nope.wav" in last and "notes.wav" in last
    assert "Traceback" not in proc.stderr
    # and a window the model cannot take stops the CLI with the key, exit 2, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run", "--set", "model.checkpoint=emodb_logmel",
         "--set", "publish.websocket.port=0", "--set", "windowing.window_s=0.02",
         "--set", "windowing.min_window_s=0.02", "--set", "windowing.hop_s=0.02"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "windowing.min_window_s" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def wav_header(channels: int, rate_hz: int, data: bytes = b"\x00" * 4096) -> bytes:
    """A PCM WAV file whose header says ``channels`` x ``rate_hz`` (16-bit)."""
    block = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate_hz, rate_hz * block, block, 16)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def test_crafted_wav_headers_are_refused_and_reads_are_bounded(tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.wav"
    crafted.write_bytes(wav_header(1024, 768_000))
    with pytest.raises(AudioError, match="has 1024 channels; at most 64"):
        async with FileSource(crafted, "x", realtime=False, block_ms=100):
            pass
    crafted.write_bytes(wav_header(2, 2_000_000))
    with pytest.raises(AudioError, match="sample rate of 2000000 Hz"):
        async with FileSource(crafted, "x", realtime=False):
            pass
    # the most a header may claim, with the largest block: a read is still at most 4 MiB
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros((96_000, 64), np.float32), 384_000, subtype="PCM_16")
    assert block_frames(384_000, 64, 10_000) * 64 * 4 <= 4 * 1024 * 1024
    sizes = []
    async with FileSource(big, "x", realtime=False, block_ms=10_000) as src:
        async for frame in src:
            sizes.append(frame.size)
    # 6 reads of 16384 frames; the resampler hands out what it has, up to about two reads' worth
    assert sum(sizes) == pytest.approx(4000, abs=64) and max(sizes) <= 2 * 16384 * 16000 // 384_000


async def test_hop_longer_than_window_is_what_the_config_allows(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    wav = speech(tmp_path, "03a01Wa.wav", "03a01Fa.wav", "03a02Ta.wav")
    n = sf.info(wav).frames
    cfg = daemon_cfg(
        tiny_checkpoint,
        [{"id": "a", "source": {"path": str(wav), "realtime": False}}],
        "windowing.window_s=1.0",
        "windowing.hop_s=2.0",
        "windowing.min_window_s=0.5",
    )
    async with Daemon(cfg) as daemon:
        tap = Tap(daemon)
        await asyncio.wait_for(daemon.run(), 60)
    est = tap.of("emotion.estimate", "a")
    assert len(est) == expected_window_count(n, 16000, 1.0, 2.0, "full", 0.5)
    starts = [e["audio_start_ms"] for e in est[:3]]
    assert starts == [0, 2000, 4000] and all(
        e["audio_end_ms"] - e["audio_start_ms"] <= 1000 for e in est
    )


async def test_silent_estimates_are_what_the_docs_say(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 8, np.float32), 16000)
    wav = speech(tmp_path, "03a01Wa.wav", silence_s=6.0)
    cfg = daemon_cfg(
        tiny_checkpoint,
        [
            {"id": "quiet", "source": {"path": str(silence), "realtime": False}},
            {"id": "talk", "source": {"path": str(wav), "realtime": False}},
        ],
        "gate.kind=energy",
    )
    async with Daemon(cfg) as daemon:
        tap = Tap(daemon)
        await asyncio.wait_for(daemon.run(), 60)
    # a stream that never had speech publishes no estimates, only its status ...
    assert tap.of("emotion.estimate", "quiet") == []
    assert [s["state"] for s in tap.of("stream.status", "quiet")] == [
        "online",
        "silence",
        "offline",
    ]
    # ... and after speech, every silent window has its estimate (speech=false)
    talk = tap.of("emotion.estimate", "talk")
    assert any(e["speech"] for e in talk) and [e for e in talk if not e["speech"]]
    assert len(talk) == daemon.cores["talk"].counters["windows"]


def test_silent_estimates_docs() -> None:
    """The config documentation says what the test above checks."""
    root = Path(__file__).resolve().parents[2]
    doc = " ".join((root / "streamer" / "config.py").read_text().split())
    assert "A stream that has had no speech yet publishes no estimates, only its status" in doc
    yaml = (
        (root / "configs" / "default.yaml")
        .read_text()
        .replace("\n                          # ", " ")
    )
    assert "before any speech a stream publishes only its status" in yaml


def key_exists(model: type[BaseModel], dotted: str) -> bool:
    """Whether ``--set dotted=...`` names a key of ``model`` (list indexes allowed)."""
    loc = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
    path, holders, _ = user_loc(model, loc)
    if isinstance(loc[-1], int):  # an item of a list: the list must be a key
        return bool(loc[:-1]) and key_exists(model, ".".join(str(p) for p in loc[:-1]))
    return path == list(loc) and any(loc[-1] in m.model_fields for m in holders)


@pytest.mark.parametrize(
    "override",
    [
        "streams.0.source.block_ms=0",
        "streams.0.source.block_ms=abc",
        "windowing.window_s=-1",
        "publish.mqtt.qos=5",
        "publish.jsonl.rotate_keep=0",
        "streams=[{id: m, source: {kind: microphone, device: [1]}}]",
        "streams=[{id: m, source: {kind: microphone, sample_rate_hz: 5}}]",
        "alerts.rules=[{name: r, label: 3}]",
        "gate.frame_ms=0.001",
        "access.max_connections=0",
        "publish.websocket.path=ws",
    ],
)
def test_every_suggested_key_exists(override: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(DaemonConfig, load_config(None, [override], DEFAULTS))
    suggested = re.findall(r"--set ([A-Za-z0-9_.]+)=", str(err.value))
    assert suggested, str(err.value)
    for key in suggested:
        assert key_exists(DaemonConfig, key), (key, str(err.value))
    # and the suggestion works: setting that key to a good value validates
    good = {
        "block_ms": "50",
        "window_s": "2",
        "qos": "1",
        "rotate_keep": "3",
        "device": "1",
        "sample_rate_hz": "16000",
        "label": "angry",
        "frame_ms": "30",
        "max_connections": "10",
        "path": "/ws",
    }
    fixed = [override, *(f"{k}={good[k.rsplit('.', 1)[1]]}" for k in suggested)]
    validate(DaemonConfig, load_config(None, fixed, DEFAULTS))


def test_a_key_of_another_source_kind_says_so() -> None:
    with pytest.raises(
        ConfigError, match=r"streams.0.source.device: unknown key; it belongs to kind=microphone"
    ):
        validate(DaemonConfig, load_config(None, ["streams.0.source.device=3"], DEFAULTS))


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_help_shows_its_own_arguments(name: str) -> None:
    module = importlib.import_module(SUBCOMMANDS[name][0])
    own = argparse.ArgumentParser(add_help=False)
    module.add_arguments(own)
    flags = [s for a in own._actions for s in a.option_strings]
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", name, "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout, (name, flag)
    example = re.search(r"e\.g\. --set ([A-Za-z0-9_.]+)=", " ".join(proc.stdout.split()))
    assert example is not None
    models = {"run": DaemonConfig, "analyze": DaemonConfig}
    if name in models:
        assert key_exists(models[name], example.group(1))
    elif name in ("watch", "send", "robot", "bench", "train", "evaluate", "ablate", "sweep"):
        assert example.group(1) != "dotted.key" and not example.group(1).startswith("worker.")


def test_a_restarted_core_goes_on_with_seq_time_and_counters() -> None:
    from streamer.core.smoother import Smoother
    from streamer.core.stream import StreamCore, WindowRequest
    from streamer.core.windower import Windower

    labels = ["neutral", "happy", "angry", "sad"]
    info = {"name": "d", "frontend": "f", "rev": "r"}

    def core(before: StreamCore | None = None) -> StreamCore:
        return StreamCore(
            "mic",
            labels,
            windower=Windower(window_s=1.0, hop_s=0.5),
            gate=None,
            smoother=Smoother(labels),
            model_info=info,
            continues=before,
        )

    first = core()
    reqs = [r for r in first.push(np.full(40000, 0.1, np.float32)) if isinstance(r, WindowRequest)]
    events = [e for r in reqs for e in first.on_result(r.seq, np.full(4, 0.25), 10, 9, 1.0)]
    first.stop(error="device gone")
    second = core(first)
    reqs2 = [
        r for r in second.push(np.full(24000, 0.1, np.float32)) if isinstance(r, WindowRequest)
    ]
    events += [e for r in reqs2 for e in second.on_result(r.seq, np.full(4, 0.25), 10, 9, 1.0)]
    estimates = [e for e in events if e.TYPE == "emotion.estimate"]
    seqs = [e.seq for e in estimates]  # type: ignore[union-attr]
    ends = [e.audio_end_ms for e in estimates]  # type: ignore[union-attr]
    assert seqs == list(range(len(seqs))) and ends == sorted(ends) and ends[-1] == 4000
    assert second.status().audio_ms == 4000 and second.counters["windows"] == len(seqs)


async def test_a_microphone_restart_keeps_seq_and_audio_time_monotonic(
    pulse_virtual_mic: VirtualMic, tiny_checkpoint: Path
) -> None:
    cfg = daemon_cfg(
        tiny_checkpoint,
        [{"id": "mic", "restart_s": 0.2, "source": {"kind": "microphone", "device": "pulse"}}],
        "windowing.window_s=1.0",
        "windowing.hop_s=0.5",
    )
    async with Daemon(cfg) as daemon:
        tap = Tap(daemon)
        stop = asyncio.Event()
        runner = asyncio.create_task(daemon.run(stop))
        try:
            await eventually(lambda: len(tap.of("emotion.estimate", "mic")) >= 3, "estimates", 30)
            source: Any = daemon.sources["mic"]
            source._stream.abort()  # PortAudio ends the stream, as when the device vanishes
            await eventually(
                lambda: [s for s in tap.of("stream.status", "mic") if s["state"] == "error"],
                "the failure",
                15,
            )
            n = len(tap.of("emotion.estimate", "mic"))
            await eventually(
                lambda: len(tap.of("emotion.estimate", "mic")) >= n + 3, "estimates again", 30
            )
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
    est = tap.of("emotion.estimate", "mic")
    assert [e["seq"] for e in est] == list(range(len(est)))  # no reset to 0 after the restart
    ends = [e["audio_end_ms"] for e in est]
    assert ends == sorted(ends)
    statuses = tap.of("stream.status", "mic")
    assert [s["state"] for s in statuses].count("online") == 2
    audio = [s["audio_ms"] for s in statuses]
    assert audio == sorted(audio)  # the second run's status goes on from the first
    windows = [s["counters"]["windows"] for s in statuses]
    assert windows == sorted(windows)
