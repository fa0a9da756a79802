"""Audio sources: async context managers that yield 16 kHz mono float32 frames."""

from streamer.sources.base import OUTPUT_RATE_HZ, Frame, Source, SourceStats
from streamer.sources.file import FileSource, open_audio
from streamer.sources.resample import StreamResampler

__all__ = [
    "OUTPUT_RATE_HZ",
    "FileSource",
    "Frame",
    "Source",
    "SourceStats",
    "StreamResampler",
    "open_audio",
]
# MicrophoneSource lives in streamer.sources.microphone (imports PortAudio lazily).
