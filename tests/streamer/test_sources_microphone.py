"""MicrophoneSource capturing real speech played into a PulseAudio virtual mic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dropformer.errors import DeviceError
from streamer.sources.microphone import MicrophoneSource, list_input_devices
from tests.fixtures.services import VirtualMic

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
SPEECH = AUDIO / "03a01Wa.wav"


def best_alignment(captured: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Lag and normalised correlation where ``reference`` best matches ``captured``."""
    n = captured.size + reference.size
    size = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(xc[: captured.size - reference.size + 1]))
    seg = captured[lag : lag + reference.size]
    score = float(
        np.dot(seg, reference) / (np.linalg.norm(seg) * np.linalg.norm(reference) + 1e-12)
    )
    return lag, score


async def test_captures_speech_played_into_the_virtual_mic(pulse_virtual_mic: VirtualMic) -> None:
    reference, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    names = [d["name"] for d in list_input_devices()]
    assert "pulse" in names, names

    captured: list[np.ndarray] = []
    async with MicrophoneSource("pulse", "mic0", block_ms=20) as mic:
        assert mic.device_info is not None and mic.device_info["name"] == "pulse"

        async def record() -> None:
            async for frame in mic:
                assert frame.dtype == np.float32 and frame.ndim == 1
                captured.append(frame)

        recorder = asyncio.create_task(record())
        await asyncio.sleep(0.3)  # some silence first
        player = pulse_virtual_mic.play(SPEECH)
        rc = await asyncio.to_thread(player.wait, 30)
        assert rc == 0, player.stderr.read() if player.stderr else rc
        # Keep recording until the whole utterance (plus margin) has arrived.
        target = sum(f.size for f in captured) + reference.size
        for _ in range(200):
            if sum(f.size for f in captured) >= target:
                break
            await asyncio.sleep(0.05)
        recorder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recorder
    audio = np.concatenate(captured)
    assert mic.stats.samples == audio.size and mic.stats.frames == len(captured)
    assert mic.stats.dropped_frames == 0

    # A playback stream may lose its first few milliseconds while it starts
    # (20 ms here): look for the utterance from 0.1 s on (EmoDB's lead-in).
    lag, score = best_alignment(audio, reference[1600:])
    assert score > 0.95, f"captured audio does not contain the played speech (score {score:.3f})"
    speech = audio[lag : lag + reference.size - 1600]
    rms_ratio = float(np.sqrt(np.mean(speech**2)) / np.sqrt(np.mean(reference[1600:] ** 2)))
    assert 0.8 < rms_ratio < 1.2  # energy arrives intact, not attenuated or clipped


async def test_missing_device_lists_the_available_ones(pulse_virtual_mic: VirtualMic) -> None:
    with pytest.raises(DeviceError, match=r"no input device matches device='no-such-mic'.*'pulse'"):
        async with MicrophoneSource("no-such-mic", "mic0"):
            pass
    with pytest.raises(DeviceError, match="not an input device index"):
        async with MicrophoneSource(999, "mic0"):
            pass


def test_devices_command_lists_the_virtual_mic(pulse_virtual_mic: VirtualMic) -> None:
    run = partial(
        subprocess.run, capture_output=True, text=True, timeout=60, env=pulse_virtual_mic.env
    )
    out = run([sys.executable, "-m", "streamer.cli", "devices", "--json"])
    assert out.returncode == 0, out.stderr
    pulse = next(d for d in json.loads(out.stdout) if d["name"] == "pulse")
    assert pulse["max_input_channels"] >= 1 and pulse["default_samplerate"] > 0
    assert pulse["hostapi"] == "ALSA"
    table = run([sys.executable, "-m", "streamer.cli", "devices"])
    assert table.returncode == 0, table.stderr
    header, rule, *rows = table.stdout.splitlines()
    assert header.split() == ["index", "name", "channels", "rate_hz", "host_api"]
    assert any(row.split()[1] == "pulse" for row in rows)


async def test_a_consumer_that_stalls_loses_the_oldest_blocks(
    pulse_virtual_mic: VirtualMic,
) -> None:
    async with MicrophoneSource("pulse", "mic0", block_ms=20, queue_blocks=3) as mic:
        for _ in range(500):  # 50 blocks per second arrive while nobody reads
            if mic.stats.dropped_frames >= 10:
                break
            await asyncio.sleep(0.02)
        assert mic.stats.dropped_frames >= 10  # counted, not buffered without bound
        frames = []
        async for frame in mic:  # the queue still holds only the newest 3 blocks
            frames.append(frame)
            if len(frames) == 3:
                break
    assert mic.stats.frames == 3
