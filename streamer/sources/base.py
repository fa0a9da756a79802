"""The :class:`Source` protocol every audio source implements, and its counters.

A source is an async context manager that, once entered, is an async iterator
of audio frames: 1-D ``float32`` numpy arrays, mono, at ``sample_rate_hz``
(always 16 kHz). Frame lengths may vary from one frame to the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

#: The one sample rate every source delivers.
OUTPUT_RATE_HZ = 16000
#: Most channels of any audio input (files, microphones, network sessions refuse more).
MAX_CHANNELS = 64
#: Sample rates an audio input may have; others are refused as absurd.
MIN_RATE_HZ, MAX_RATE_HZ = 1000, 384_000
#: Most bytes of float32 samples read from a file in one block, whatever its header says.
MAX_BLOCK_BYTES = 4 * 1024 * 1024

Frame = npt.NDArray[np.float32]


@dataclass
class SourceStats:
    """Counters a source keeps while it runs (read them at any time).

    Attributes:
        frames: frames handed to the consumer.
        samples: samples handed to the consumer (at 16 kHz).
        overflows: input overflows reported by the sound device driver
            (audio the hardware lost before we saw it).
        dropped_frames: device blocks this process dropped because the
            consumer fell behind and the bounded queue was full.
        loops: times a looping file source started over.
    """

    frames: int = 0
    samples: int = 0
    overflows: int = 0
    dropped_frames: int = 0
    loops: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and health endpoints)."""
        return asdict(self)


@runtime_checkable
class Source(Protocol):
    """An audio input: ``async with src: async for frame in src: ...``."""

    stream_id: str
    sample_rate_hz: int
    stats: SourceStats

    async def __aenter__(self) -> Source: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Frame]: ...
