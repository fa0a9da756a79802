"""FileSource and StreamResampler on real EmoDB speech."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from dropformer.errors import AudioError
from streamer.sources import FileSource, Source, StreamResampler

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
ANGRY = AUDIO / "03a01Wa.wav"  # 1.88 s, 16 kHz mono
FEAR = AUDIO / "08a02Fe.wav"  # 1.62 s, 16 kHz mono


async def collect(src: FileSource, max_samples: int | None = None) -> np.ndarray:
    frames = []
    n = 0
    async with src:
        async for frame in src:
            assert frame.dtype == np.float32 and frame.ndim == 1
            frames.append(frame)
            n += frame.size
            if max_samples is not None and n >= max_samples:
                break
    return np.concatenate(frames)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


async def test_16k_file_comes_out_unchanged() -> None:
    original, rate = sf.read(ANGRY, dtype="float32")
    assert rate == 16000
    src = FileSource(ANGRY, "a", realtime=False)
    assert isinstance(src, Source)
    out = await collect(src)
    np.testing.assert_array_equal(out, original)
    assert src.stats.samples == original.size
    assert src.stats.frames == int(np.ceil(original.size / 1600))


async def test_44k_stereo_is_mixed_down_and_resampled(tmp_path: Path) -> None:
    original, _ = sf.read(FEAR, dtype="float32")
    up = soxr.resample(original, 16000, 44100).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.05, up.size).astype(np.float32)
    # Left and right differ by +-noise: the mean of the channels is the speech.
    stereo = np.stack([up + noise, up - noise], axis=1)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")

    out = await collect(FileSource(path, "s", realtime=False, block_ms=37))
    assert abs(out.size - original.size) <= 16  # same duration within 1 ms
    assert corr(out, original) > 0.99


async def test_one_channel_of_a_stereo_file_is_that_channel_alone(tmp_path: Path) -> None:
    angry, _ = sf.read(ANGRY, dtype="int16")
    fear, _ = sf.read(FEAR, dtype="int16")
    n = min(angry.size, fear.size)
    path = tmp_path / "call.wav"
    sf.write(path, np.stack([angry[:n], fear[:n]], axis=1), 16000, subtype="PCM_16")
    for channel, alone in ((0, angry), (1, fear)):
        out = await collect(FileSource(path, "c", realtime=False, channel=channel))
        np.testing.assert_array_equal(out, alone[:n].astype(np.float32) / 32768.0)
    with pytest.raises(
        AudioError, match=r"has 2 channel\(s\), so it has no channel 2; use a channel from 0 to 1"
    ):
        await collect(FileSource(path, "c", realtime=False, channel=2))


async def test_flac_and_ogg_are_read(tmp_path: Path) -> None:
    original, _ = sf.read(ANGRY, dtype="float32")
    for name in ("a.flac", "a.ogg"):
        sf.write(tmp_path / name, original, 16000)
        out = await collect(FileSource(tmp_path / name, "x", realtime=False))
        assert corr(out, original) > 0.95, name


async def test_text_file_named_wav_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio\n" * 100)
    with pytest.raises(AudioError, match=r"notes\.wav.*expected a WAV, FLAC or OGG"):
        async with FileSource(bogus, "x"):
            pass


async def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"missing\.wav.*does not exist"):
        async with FileSource(tmp_path / "missing.wav", "x"):
            pass


async def test_realtime_pacing_follows_the_audio_clock() -> None:
    duration_s = sf.info(FEAR).duration
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await collect(FileSource(FEAR, "rt", realtime=True, block_ms=100))
    elapsed_s = loop.time() - t0
    assert out.size == sf.info(FEAR).frames
    # A frame is released only once its audio "has been spoken".
    assert elapsed_s >= duration_s - 0.01
    assert elapsed_s < 2 * duration_s + 2.0  # loose: only catches runaway sleeping


async def test_not_realtime_is_fast_and_loop_repeats() -> None:
    original, _ = sf.read(FEAR, dtype="float32")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    src = FileSource(FEAR, "loop", realtime=False, loop=True)
    out = await collect(src, max_samples=5 * original.size)
    elapsed_s = loop.time() - t0
    assert elapsed_s < 4 * sf.info(FEAR).duration  # 5x the audio in well under its duration
    assert src.stats.loops >= 4
    np.testing.assert_array_equal(out[: original.size], original)
    np.testing.assert_array_equal(out[original.size : 2 * original.size], original)


async def test_nan_samples_pass_through(tmp_path: Path) -> None:
    original, _ = sf.read(FEAR, dtype="float32")
    original[1000:1010] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, original, 16000, subtype="FLOAT")
    out = await collect(FileSource(path, "n", realtime=False))
    assert np.flatnonzero(np.isnan(out)).tolist() == list(range(1000, 1010))


@pytest.mark.parametrize("rate", [0, -16000, float("nan")])
def test_resampler_refuses_bad_rates(rate: float) -> None:
    with pytest.raises(AudioError, match="sample_rate_hz"):
        StreamResampler(rate)


def test_streaming_resampler_matches_one_shot() -> None:
    original, _ = sf.read(ANGRY, dtype="float32")
    x48 = soxr.resample(original, 16000, 48000).astype(np.float32)
    r = StreamResampler(48000, 16000, channels=1)
    blocks = [r.push(x48[i : i + 960]) for i in range(0, x48.size, 960)] + [r.flush()]
    streamed = np.concatenate(blocks)
    one_shot = soxr.resample(x48, 48000, 16000)
    assert abs(streamed.size - one_shot.size) <= 2
    assert corr(streamed, one_shot) > 0.999
    assert corr(streamed, original) > 0.99


def test_resampler_refuses_wrong_channel_count() -> None:
    r = StreamResampler(44100, channels=2)
    with pytest.raises(AudioError, match="channels=2"):
        r.push(np.zeros((100, 3), dtype=np.float32))
