"""Replay an audio file as a live stream (demos, tests, offline runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from dropformer.errors import AudioError
from streamer.sources.base import OUTPUT_RATE_HZ, Frame, SourceStats
from streamer.sources.resample import StreamResampler

log = logging.getLogger(__name__)


class FileSource:
    """Frames from a WAV/FLAC/OGG file, mixed down and resampled to 16 kHz.

    Args:
        path: the audio file (any sample rate, any number of channels).
        stream_id: the id events from this source carry.
        realtime: pace frames like a live microphone (a frame is released when
            the wall clock reaches the end of the audio it holds, scheduled
            from the cumulative sample count so pacing never drifts); when
            ``False`` frames come as fast as the consumer pulls them.
        block_ms: audio per frame read from the file, in milliseconds (default 100).
        loop: start over at the end of the file, forever (the demo uses it).

    Reading a block of a local file takes microseconds, so it is done on the
    event loop. NaN samples pass through untouched (the core counts them).
    """

    def __init__(
        self, path: str | Path, stream_id: str, *, realtime: bool = True,
        block_ms: float = 100.0, loop: bool = False,
    ) -> None:
        if not block_ms > 0:
            raise AudioError(f"block_ms must be > 0 milliseconds, got {block_ms!r}")
        self.path = Path(path)
        self.stream_id = stream_id
        self.sample_rate_hz = OUTPUT_RATE_HZ
        self.realtime = realtime
        self.block_ms = float(block_ms)
        self.loop = loop
        self.stats = SourceStats()
        self._file: sf.SoundFile | None = None

    async def __aenter__(self) -> FileSource:
        if not self.path.is_file():
            raise AudioError(
                f"audio file {str(self.path)!r} does not exist; pass the path of a WAV, FLAC or OGG file"
            )
        try:
            f = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(
                f"audio file {str(self.path)!r} cannot be decoded ({exc}); "
                "expected a WAV, FLAC or OGG audio file"
            ) from exc
        if f.frames == 0:
            f.close()
            raise AudioError(f"audio file {str(self.path)!r} holds no samples; pass a non-empty recording")
        self._file = f
        log.info(
            "stream %s: file %s (%d Hz, %d ch, %.2f s)%s",
            self.stream_id, self.path, f.samplerate, f.channels, f.frames / f.samplerate,
            ", looping" if self.loop else "",
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        f = self._file
        if f is None:
            raise AudioError(f"FileSource {self.stream_id!r} is not open; use 'async with source:'")
        resampler = StreamResampler(f.samplerate, OUTPUT_RATE_HZ, f.channels)
        block_in = max(1, round(f.samplerate * self.block_ms / 1000.0))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            data = f.read(block_in, dtype="float32", always_2d=True)
            if len(data) == 0:
                if self.loop:
                    f.seek(0)
                    self.stats.loops += 1
                    continue
                frame = resampler.flush()
                if frame.size:
                    await self._pace(loop, t0, frame)
                    yield frame
                return
            frame = resampler.push(data)
            if frame.size == 0:
                continue
            await self._pace(loop, t0, frame)
            yield frame

    async def _pace(self, loop: asyncio.AbstractEventLoop, t0: float, frame: Frame) -> None:
        """Wait until the audio in ``frame`` would have been recorded, then count it."""
        end_s = (self.stats.samples + frame.size) / OUTPUT_RATE_HZ
        if self.realtime:
            delay_s = t0 + end_s - loop.time()
            await asyncio.sleep(max(0.0, delay_s))
        else:
            await asyncio.sleep(0)  # let other tasks run between frames
        self.stats.frames += 1
        self.stats.samples += int(frame.size)


def read_audio_16k(path: str | Path) -> Frame:
    """Read a whole file as mono float32 at 16 kHz (a helper for tests and tools)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"audio file {str(path)!r} cannot be decoded ({exc})") from exc
    r = StreamResampler(rate, OUTPUT_RATE_HZ, data.shape[1])
    return np.concatenate([r.push(data), r.flush()])
