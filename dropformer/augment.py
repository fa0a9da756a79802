"""Live conditions for training and evaluation: noise, babble, room reverberation, a telephone line, level.

A monitor meets noisy rooms, far microphones and phone calls; acted corpora are
studio-clean. Each named :class:`Condition` turns a clean 16 kHz waveform into
what the daemon would hear. Training conditions draw their parameters at
random (seeded per utterance, so a cached feature file is reproducible);
evaluation conditions are fixed (noise at exactly 10 dB SNR, one reverberant
room, the telephone channel), so that the evaluation table tells users what to
expect under each.

- noise: coloured noise (white, pink or brown), mixed at the SNR drawn.
- babble: 3-6 other utterances of the corpus summed (other speakers), as in a
  busy room or call centre.
- reverb: a room impulse response of a shoebox room simulated with
  ``pyroomacoustics`` (image source method; RT60 and geometry drawn).
- telephone: 300-3400 Hz band, 8 kHz sampling, G.711 μ-law (8 bits), back to
  16 kHz.
- gain: the level scaled (and clipped at full scale, as a real ADC does).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from dropformer.errors import ConfigError

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class Condition:
    """A recipe of corruptions, applied in the order reverb, noise/babble, telephone, gain."""

    name: str
    reverb_rt60_s: tuple[float, float] | None = None
    """Draw the room's RT60 from this range (seconds); None = no reverberation."""
    noise_snr_db: tuple[float, float] | None = None
    """Add coloured noise at an SNR drawn from this range (dB); None = no noise."""
    babble_snr_db: tuple[float, float] | None = None
    """Add babble of other utterances at an SNR drawn from this range (dB); None = no babble."""
    telephone: bool = False
    """Pass through a 300-3400 Hz, 8 kHz, μ-law telephone channel."""
    gain_db: tuple[float, float] | None = None
    """Scale the level by a gain drawn from this range (dB), clipping at full scale."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Training conditions (random parameters).
TRAIN_CONDITIONS: dict[str, Condition] = {
    "noise": Condition("noise", noise_snr_db=(0.0, 25.0), gain_db=(-12.0, 6.0)),
    "babble": Condition("babble", babble_snr_db=(3.0, 20.0)),
    "reverb": Condition("reverb", reverb_rt60_s=(0.2, 1.0), noise_snr_db=(15.0, 35.0)),
    "telephone": Condition(
        "telephone", telephone=True, noise_snr_db=(15.0, 40.0), gain_db=(-10.0, 3.0)
    ),
    "level": Condition("level", gain_db=(-30.0, 10.0)),
}
#: Evaluation conditions (fixed parameters): what the figures in BENCHMARKS.md are measured under.
EVAL_CONDITIONS: dict[str, Condition] = {
    "clean": Condition("clean"),
    "noise10": Condition("noise10", noise_snr_db=(10.0, 10.0)),
    "babble10": Condition("babble10", babble_snr_db=(10.0, 10.0)),
    "reverb": Condition("reverb", reverb_rt60_s=(0.6, 0.6)),
    "telephone": Condition("telephone", telephone=True),
}
CONDITIONS: dict[str, Condition] = {
    **TRAIN_CONDITIONS,
    **{f"eval:{k}": v for k, v in EVAL_CONDITIONS.items()},
}


def condition(name: str) -> Condition:
    """A training condition by name, or an evaluation condition as ``eval:<name>``."""
    if name not in CONDITIONS:
        raise ConfigError(f"unknown condition {name!r}; choose from {sorted(CONDITIONS)}")
    return CONDITIONS[name]


def seeded_rng(*parts: str) -> np.random.Generator:
    """A generator seeded from text (the utterance id and the condition), stable across runs and machines."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    out = np.fft.irfft(spec / f ** (exponent / 2.0), n)
    return out / rms(out)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + noise`` with the noise scaled to ``snr_db`` below the speech's RMS."""
    return speech + noise * (rms(speech) / rms(noise) / 10.0 ** (snr_db / 20.0))


def room_impulse_response(rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """A shoebox room's impulse response (pyroomacoustics, image source) with the given RT60."""
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0)])
    try:
        absorption, max_order = pra.inverse_sabine(rt60_s, dims)
    except ValueError:  # the room is too small for that RT60: make it larger
        dims = dims * 2.0
        absorption, max_order = pra.inverse_sabine(rt60_s, dims)
    room = pra.ShoeBox(
        dims, fs=SAMPLE_RATE_HZ, materials=pra.Material(absorption), max_order=min(max_order, 40)
    )
    source = rng.uniform(0.5, dims - 0.5)
    mic = rng.uniform(0.5, dims - 0.5)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    return rir / np.abs(rir).max()


def telephone_channel(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz band, resampled to 8 kHz, G.711 μ-law (8 bit), back to 16 kHz."""
    from scipy.signal import butter, sosfilt

    sos = butter(4, [300.0, 3400.0], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    narrow = soxr.resample(sosfilt(sos, x).astype(np.float32), SAMPLE_RATE_HZ, 8000)
    decoded = mulaw_decode(mulaw_encode(narrow))
    return soxr.resample(decoded, 8000, SAMPLE_RATE_HZ)[: len(x)].astype(np.float32)


def mulaw_encode(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """μ-law compand and quantise [-1, 1] floats to 8-bit codes 0..255 (G.711 curve, linear quantiser)."""
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    return np.clip(np.round((y + 1.0) / 2.0 * mu), 0, mu).astype(np.uint8)


def mulaw_decode(codes: np.ndarray, mu: int = 255) -> np.ndarray:
    y = codes.astype(np.float64) / mu * 2.0 - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def apply(
    cond: Condition,
    wave: np.ndarray,
    rng: np.random.Generator,
    babble_source: Callable[[np.random.Generator], np.ndarray] | None = None,
) -> np.ndarray:
    """``wave`` (16 kHz mono float32) as heard under ``cond``; parameters drawn from ``rng``."""
    x = np.asarray(wave, dtype=np.float64)
    n = len(x)
    if cond.reverb_rt60_s is not None:
        rir = room_impulse_response(rng, float(rng.uniform(*cond.reverb_rt60_s)))
        from scipy.signal import fftconvolve

        x = fftconvolve(x, rir)[:n]
    if cond.noise_snr_db is not None:
        noise = coloured_noise(n, rng, float(rng.choice([0.0, 1.0, 2.0])))
        x = mix_at_snr(x, noise, float(rng.uniform(*cond.noise_snr_db)))
    if cond.babble_snr_db is not None:
        if babble_source is None:
            raise ConfigError(f"condition {cond.name!r} needs other utterances for babble")
        talkers = int(rng.integers(3, 7))
        babble = np.zeros(n)
        for _ in range(talkers):
            other = np.asarray(babble_source(rng), dtype=np.float64)
            other = np.resize(other, n) if len(other) < n else other[:n]
            babble += other / rms(other)
        x = mix_at_snr(x, babble, float(rng.uniform(*cond.babble_snr_db)))
    if cond.telephone:
        x = telephone_channel(x.astype(np.float32)).astype(np.float64)
    if cond.gain_db is not None:
        x = x * 10.0 ** (float(rng.uniform(*cond.gain_db)) / 20.0)
    peak = np.abs(x).max() if n else 0.0
    if cond.gain_db is None and peak > 1.0:
        x = x / peak  # keep mixtures in range unless a gain was asked for (then clip, like an ADC)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def babble_pool(
    waves: Sequence[Callable[[], np.ndarray]],
) -> Callable[[np.random.Generator], np.ndarray]:
    """Draw a random utterance from ``waves`` (loaders), for babble."""
    if not waves:
        raise ConfigError("babble needs at least one other utterance")

    def draw(rng: np.random.Generator) -> np.ndarray:
        return waves[int(rng.integers(len(waves)))]()

    return draw
