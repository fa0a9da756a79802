"""Replay an audio file as a live stream (demos, tests, offline runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import soundfile as sf

from dropformer.errors import AudioError
from streamer.sources.base import (
    MAX_BLOCK_BYTES,
    MAX_CHANNELS,
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    OUTPUT_RATE_HZ,
    Frame,
    SourceStats,
)
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
        block_ms: audio per frame read from the file, in milliseconds (default 100;
            ``streams.N.source.block_ms`` checks the range). A block is also at most
            ``MAX_BLOCK_BYTES`` of samples, whatever the file's header says.
        loop: start over at the end of the file, forever (the demo uses it).
        channel: analyse only this channel of the file (0 = the first; one leg of a
            stereo call recording); ``None`` mixes every channel down to mono.

    A file with more than ``MAX_CHANNELS`` channels or a rate outside
    ``MIN_RATE_HZ`` .. ``MAX_RATE_HZ`` is refused (:class:`AudioError`) when the
    source is entered, and so is a ``channel`` the file does not have. Reading a block of a local file takes microseconds, so it
    is done on the event loop. NaN samples pass through untouched (the core
    counts them).
    """

    def __init__(
        self,
        path: str | Path,
        stream_id: str,
        *,
        realtime: bool = True,
        block_ms: float = 100.0,
        loop: bool = False,
        channel: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.channel = channel
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
        self._file = open_audio(self.path)
        f = self._file
        if self.channel is not None and not 0 <= self.channel < f.channels:
            f.close()
            self._file = None
            raise AudioError(
                f"audio file {str(self.path)!r} has {f.channels} channel(s), so it has no channel "
                f"{self.channel}; use a channel from 0 to {f.channels - 1}, or mix the channels (null)"
            )
        log.info(
            "stream %s: file %s (%d Hz, %d ch%s, %.2f s)%s",
            self.stream_id,
            self.path,
            f.samplerate,
            f.channels,
            "" if self.channel is None else f", channel {self.channel}",
            f.frames / f.samplerate,
            ", looping" if self.loop else "",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
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
        one = self.channel
        resampler = StreamResampler(
            f.samplerate, OUTPUT_RATE_HZ, 1 if one is not None else f.channels
        )
        block_in = block_frames(f.samplerate, f.channels, self.block_ms)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            try:
                data = f.read(block_in, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(
                    f"audio file {str(self.path)!r} cannot be read any further ({exc}); is it damaged?"
                ) from exc
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
            frame = resampler.push(data if one is None else data[:, one])
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


def block_frames(rate_hz: int, channels: int, block_ms: float) -> int:
    """Sample frames per read: ``block_ms`` of audio, but at most ``MAX_BLOCK_BYTES`` of float32."""
    return max(
        1, min(round(rate_hz * block_ms / 1000.0), MAX_BLOCK_BYTES // (4 * max(1, channels)))
    )


def open_audio(path: str | Path) -> sf.SoundFile:
    """Open an audio file for reading after checking what its header claims.

    Raises :class:`AudioError` naming the file and the fix when it cannot be
    decoded, holds no samples, or claims more than ``MAX_CHANNELS`` channels or
    a rate outside ``MIN_RATE_HZ`` .. ``MAX_RATE_HZ``.
    """
    name = str(path)
    try:
        f = sf.SoundFile(name)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise AudioError(
            f"audio file {name!r} cannot be decoded ({exc}); expected a WAV, FLAC or OGG audio file"
        ) from exc
    problem = None
    if not 1 <= f.channels <= MAX_CHANNELS:
        problem = f"has {f.channels} channels; at most {MAX_CHANNELS} are accepted"
    elif not MIN_RATE_HZ <= f.samplerate <= MAX_RATE_HZ:
        problem = f"has a sample rate of {f.samplerate} Hz; {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz are accepted"
    elif f.frames == 0:
        problem = "holds no samples; pass a non-empty recording"
    if problem is not None:
        f.close()
        raise AudioError(f"audio file {name!r} {problem} (a damaged or crafted header?)")
    return f
