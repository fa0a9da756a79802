"""Network audio codecs: G.711 mu-law against the reference, PCM layouts, bad lengths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamer.core.codecs import (
    MULAW_TO_INT16,
    decode,
    encode,
    float_to_int16,
    mulaw_decode,
    mulaw_encode_int16,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference G.711 codec (deprecated, gone in 3.13: tests only)


def test_mulaw_decode_matches_the_reference_for_every_code() -> None:
    codes = bytes(range(256))
    ref = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype="<i2")
    np.testing.assert_array_equal(MULAW_TO_INT16, ref)
    np.testing.assert_array_equal(mulaw_decode(codes), ref.astype(np.float32) / 32768)


def test_mulaw_encode_matches_the_reference_for_every_int16() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    ref = np.frombuffer(audioop.lin2ulaw(pcm.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(mulaw_encode_int16(pcm), ref)


def test_mulaw_round_trip_error_is_within_the_segment_step() -> None:
    x = np.linspace(-0.99, 0.99, 2001, dtype=np.float32)
    y = decode(encode(x, "mulaw"), "mulaw", 1)[:, 0]
    # G.711 keeps about 2-3 % relative error (plus a small absolute step near zero)
    assert np.all(np.abs(y - x) <= 0.035 * np.abs(x) + 0.0005)


def test_pcm_encodings_decode_interleaved_channels() -> None:
    stereo = np.array([[0.5, -0.25], [0.0, 1.0], [-1.0, 0.125]], dtype=np.float32)
    f32 = decode(encode(stereo, "pcm_f32le"), "pcm_f32le", 2)
    np.testing.assert_array_equal(f32, stereo)
    s16 = decode(encode(stereo, "pcm_s16le"), "pcm_s16le", 2)
    assert s16.shape == (3, 2) and s16.dtype == np.float32
    np.testing.assert_allclose(s16, stereo, atol=1 / 32768)
    # little-endian on the wire, whatever the machine
    assert encode(np.array([0.5], np.float32), "pcm_s16le") == (16384).to_bytes(2, "little")


def test_s16_and_f32_of_the_same_samples_decode_identically() -> None:
    pcm = np.random.default_rng(0).integers(-32768, 32767, 1000).astype(np.int16)
    as_s16 = decode(pcm.astype("<i2").tobytes(), "pcm_s16le", 1)
    as_f32 = decode((pcm / 32768.0).astype("<f4").tobytes(), "pcm_f32le", 1)
    np.testing.assert_array_equal(as_s16, as_f32)


def test_bad_lengths_and_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="whole number"):
        decode(b"\x00\x01\x02", "pcm_s16le", 1)
    with pytest.raises(ValueError, match="whole number"):
        decode(b"\x00" * 6, "pcm_f32le", 1)
    with pytest.raises(ValueError, match="whole number"):
        decode(b"\x00" * 3, "mulaw", 2)
    with pytest.raises(ValueError, match="unknown encoding"):
        decode(b"\x00\x00", "pcm_s24le", 1)


def test_float_to_int16_clips() -> None:
    np.testing.assert_array_equal(
        float_to_int16([-2.0, -1.0, 0.0, 1.0, 2.0]), [-32768, -32768, 0, 32767, 32767]
    )
