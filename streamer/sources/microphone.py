"""Live capture from a sound device through PortAudio (``sounddevice``).

PortAudio only sees the devices that existed when it was initialised, which
``sounddevice`` does once at import. A device that appears later (a USB
microphone plugged in, a PulseAudio server started after import) stays
invisible until :func:`refresh_devices` re-initialises PortAudio — which is
only safe while no stream is open. On Linux the ALSA device ``"pulse"``
reaches the PulseAudio (or PipeWire) server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import numpy as np

from dropformer.errors import DeviceError
from streamer.sources.base import OUTPUT_RATE_HZ, Frame, SourceStats
from streamer.sources.resample import StreamResampler

log = logging.getLogger(__name__)


def _sd() -> Any:
    """Import sounddevice lazily: it needs the PortAudio library at import."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise DeviceError(
            f"cannot load PortAudio ({exc}); install it (Debian: apt-get install libportaudio2) "
            "and the Python package (pip install 'emotion-monitor[audio]')"
        ) from exc
    return sounddevice


def refresh_devices() -> None:
    """Re-initialise PortAudio so that it sees devices added since import.

    Only call this while no stream is open: it invalidates open streams.
    """
    sd = _sd()
    sd._terminate()
    sd._initialize()


def list_input_devices(*, refresh: bool = False) -> list[dict[str, Any]]:
    """Every device that can record: index, name, max_input_channels,
    default_samplerate (Hz) and hostapi (the host API's name).

    ``refresh=True`` re-initialises PortAudio first (see :func:`refresh_devices`).
    """
    sd = _sd()
    if refresh:
        refresh_devices()
    hostapis = sd.query_hostapis()
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] < 1:
            continue
        out.append(
            {
                "index": int(d["index"]),
                "name": str(d["name"]),
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d["default_samplerate"]),
                "hostapi": str(hostapis[d["hostapi"]]["name"]),
            }
        )
    return out


def _describe(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no input devices at all (is PortAudio's backend running? see 'emotion-monitor devices')"
    return "available input devices: " + "; ".join(
        f"{d['index']}: {d['name']!r} ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)"
        for d in devices
    )


def resolve_input_device(device: str | int | None) -> dict[str, Any]:
    """Find an input device by index, exact name, or unique name substring
    (case-insensitive); ``None`` means the system default input.

    Raises:
        DeviceError: no such device, or the substring matches several; the
            message lists the available input devices.
    """
    sd = _sd()
    devices = list_input_devices()
    if device is None:
        try:
            index = int(sd.query_devices(kind="input")["index"])
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(
                f"there is no default input device ({exc}); {_describe(devices)}"
            ) from exc
        device = index
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        idx = int(device)
        for d in devices:
            if d["index"] == idx:
                return d
        raise DeviceError(f"device={device!r} is not an input device index; {_describe(devices)}")
    wanted = device.strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    if exact:
        return exact[0]
    matches = [d for d in devices if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(f"no input device matches device={device!r}; {_describe(devices)}")
    raise DeviceError(
        f"device={device!r} matches several input devices; pass an index or a longer name. "
        + _describe(matches)
    )


class MicrophoneSource:
    """Frames from a live input device, mixed down and resampled to 16 kHz.

    Args:
        device: index, name (substring) or ``None`` for the default input.
        stream_id: the id events from this source carry.
        block_ms: audio per device callback, in milliseconds (default 20).
        queue_blocks: blocks held for a slow consumer (default 50, i.e. 1 s at
            20 ms). Drop policy: when the queue is full the OLDEST block is
            dropped and counted in ``stats.dropped_frames`` — real time beats
            completeness, and the newest audio is what a live monitor needs.
        channels: channels to record (mixed down to mono).
        sample_rate_hz: device rate to open; ``None`` (default) uses the
            device's native default rate, which avoids a resampler in the driver.

    The PortAudio callback runs on PortAudio's thread: it only copies the block
    and hands it to the event loop with ``call_soon_threadsafe``. Overflows the
    driver reports (``status.input_overflow``) are counted in ``stats.overflows``.
    The stream is stopped with ``abort()`` then ``close()``: ``stop()`` can
    block for tens of seconds on a source that delivers no data.
    """

    def __init__(
        self,
        device: str | int | None,
        stream_id: str,
        *,
        block_ms: float = 20.0,
        queue_blocks: int = 50,
        channels: int = 1,
        sample_rate_hz: float | None = None,
    ) -> None:
        self.device = device
        self.stream_id = stream_id
        self.sample_rate_hz = OUTPUT_RATE_HZ
        self.block_ms = float(block_ms)
        self.queue_blocks = int(queue_blocks)
        self.channels = int(channels)
        self.device_rate_hz: float | None = sample_rate_hz
        self.device_info: dict[str, Any] | None = None
        self.stats = SourceStats()
        self._queue: asyncio.Queue[np.ndarray | None] | None = None
        self._stream: Any = None
        self._resampler: StreamResampler | None = None

    async def __aenter__(self) -> MicrophoneSource:
        sd = _sd()
        info = resolve_input_device(self.device)
        if self.channels > info["max_input_channels"]:
            raise DeviceError(
                f"channels={self.channels} but device {info['name']!r} records at most "
                f"{info['max_input_channels']} channel(s); lower channels"
            )
        rate = float(self.device_rate_hz or info["default_samplerate"])
        self.device_info, self.device_rate_hz = info, rate
        self._resampler = StreamResampler(rate, OUTPUT_RATE_HZ, self.channels)
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.queue_blocks)

        def callback(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
            loop.call_soon_threadsafe(self._enqueue, indata.copy(), bool(status.input_overflow))

        def finished() -> None:
            loop.call_soon_threadsafe(self._enqueue, None, False)

        try:
            self._stream = sd.InputStream(
                device=info["index"],
                samplerate=rate,
                channels=self.channels,
                dtype="float32",
                blocksize=max(1, round(rate * self.block_ms / 1000.0)),
                callback=callback,
                finished_callback=finished,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            self._close_stream()
            raise DeviceError(
                f"cannot open input device {info['index']}: {info['name']!r} at {rate:.0f} Hz, "
                f"{self.channels} ch ({exc}); check that it is free and supports this rate"
            ) from exc
        log.info("stream %s: recording from %r at %.0f Hz", self.stream_id, info["name"], rate)
        return self

    def _enqueue(self, block: np.ndarray | None, overflow: bool) -> None:
        """On the loop thread: queue a block, dropping the oldest when full."""
        q = self._queue
        if q is None:
            return
        if overflow:
            self.stats.overflows += 1
        if q.full():
            try:
                q.get_nowait()
            except asyncio.QueueEmpty:  # pragma: no cover - cannot happen on one thread
                pass
            self.stats.dropped_frames += 1
            if self.stats.dropped_frames in (1, 10, 100) or self.stats.dropped_frames % 1000 == 0:
                log.warning(
                    "stream %s: consumer too slow, dropped %d audio block(s) so far",
                    self.stream_id,
                    self.stats.dropped_frames,
                )
        q.put_nowait(block)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
            finally:
                stream.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_stream()
        self._queue = None

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        q, resampler = self._queue, self._resampler
        if q is None or resampler is None:
            raise DeviceError(
                f"MicrophoneSource {self.stream_id!r} is not open; use 'async with source:'"
            )
        while True:
            block = await q.get()
            if block is None:
                if self._stream is None:  # closed by us
                    return
                raise DeviceError(
                    f"input device {self.device!r} stopped delivering audio (unplugged or "
                    "its server went away); restart the stream"
                )
            frame = resampler.push(block)
            if frame.size == 0:
                continue
            self.stats.frames += 1
            self.stats.samples += int(frame.size)
            yield frame
