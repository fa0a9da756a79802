"""Audio sources: async context managers that yield 16 kHz mono float32 frames."""

from streamer.sources.base import OUTPUT_RATE_HZ, Frame, Source, SourceStats
from streamer.sources.file import FileSource, read_audio_16k
from streamer.sources.resample import StreamResampler

__all__ = [
    "OUTPUT_RATE_HZ", "FileSource", "Frame", "Source", "SourceStats", "StreamResampler",
    "read_audio_16k",
]
# MicrophoneSource lives in streamer.sources.microphone (imports PortAudio lazily).
