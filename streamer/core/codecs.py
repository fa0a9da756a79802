"""Raw audio codecs for network ingest (sans-I/O, numpy only).

Three sample encodings travel over the network:

* ``pcm_s16le``: signed 16-bit little-endian integers, full scale 32768;
* ``pcm_f32le``: IEEE float32 little-endian in [-1, 1];
* ``mulaw``: 8-bit G.711 mu-law (what telephone networks and Twilio carry).

Channels are interleaved (``L R L R ...``). :func:`decode` turns a byte string
into a float32 array of shape ``(samples, channels)`` scaled to [-1, 1];
:func:`encode` is its inverse (used by the sender and the tests).

The mu-law codec is the ITU-T G.711 formula, implemented with numpy (no
``audioop``, which is deprecated and gone in Python 3.13): a 14-bit linear
magnitude is biased by 0x84 (132), its segment (exponent) and 4-bit mantissa
are packed with the sign and the byte is inverted. Decoding is a 256-entry
lookup table.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt

Encoding = Literal["pcm_s16le", "pcm_f32le", "mulaw"]

#: bytes per sample of each encoding (one channel)
SAMPLE_BYTES: Final[dict[str, int]] = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1}
ENCODINGS: Final[tuple[str, ...]] = tuple(SAMPLE_BYTES)

_MULAW_BIAS: Final = 0x84  # 132: added before the segment search (G.711)
_MULAW_CLIP14: Final = 8159  # largest 14-bit magnitude encoded exactly


def _mulaw_table() -> npt.NDArray[np.int16]:
    """The 256 mu-law codes decoded to 16-bit linear PCM (G.711)."""
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


MULAW_TO_INT16: Final[npt.NDArray[np.int16]] = _mulaw_table()
_MULAW_TO_FLOAT: Final[npt.NDArray[np.float32]] = (MULAW_TO_INT16 / 32768.0).astype(np.float32)


def mulaw_decode(data: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """mu-law bytes -> float32 samples in [-1, 1] (one sample per byte)."""
    codes = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    return _MULAW_TO_FLOAT[codes]


def mulaw_encode_int16(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """16-bit linear PCM -> mu-law codes (G.711, as in the ITU/Sun reference code:
    the sample is cut to 14 bits, its magnitude biased by 33 and clipped, and the
    segment and 4-bit mantissa packed with the sign, inverted)."""
    v = np.asarray(pcm, dtype=np.int32) >> 2  # 14-bit two's complement (floor, as C does)
    mask = np.where(v < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(v), _MULAW_CLIP14) + (_MULAW_BIAS >> 2)  # 33 .. 8192
    segment = np.floor(np.log2(magnitude)).astype(np.int32) - 5  # 0..8 (8: out of range)
    mantissa = (magnitude >> (np.clip(segment, 0, 7) + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.clip(segment, 0, 7) << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def float_to_int16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """float samples in [-1, 1] -> int16 (rounded, clipped to the int16 range)."""
    x = np.asarray(samples, dtype=np.float64) * 32768.0
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def frame_bytes(encoding: str, channels: int) -> int:
    """Bytes of one sample frame (one sample of every channel)."""
    return SAMPLE_BYTES[encoding] * channels


def decode(data: bytes, encoding: str, channels: int) -> npt.NDArray[np.float32]:
    """Interleaved audio bytes -> float32 array ``(samples, channels)`` in [-1, 1].

    Raises ValueError when ``encoding`` is unknown or ``len(data)`` is not a
    whole number of sample frames (``frame_bytes(encoding, channels)``).
    Non-finite float samples are passed through (the stream core counts them).
    """
    if encoding not in SAMPLE_BYTES:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {list(ENCODINGS)}")
    step = frame_bytes(encoding, channels)
    if len(data) % step:
        raise ValueError(
            f"{len(data)} bytes is not a whole number of {encoding} sample frames of "
            f"{channels} channel(s) ({step} bytes each)"
        )
    if encoding == "pcm_s16le":
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    elif encoding == "pcm_f32le":
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        x = mulaw_decode(data)
    return x.reshape(-1, channels)


def encode(samples: npt.ArrayLike, encoding: str) -> bytes:
    """float samples ``(samples,)`` or ``(samples, channels)`` in [-1, 1] -> interleaved bytes."""
    x = np.asarray(samples, dtype=np.float32)
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    pcm = float_to_int16(x)
    if encoding == "pcm_s16le":
        return pcm.astype("<i2").tobytes()
    if encoding == "mulaw":
        return mulaw_encode_int16(pcm).tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; use one of {list(ENCODINGS)}")
