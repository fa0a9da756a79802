"""A :class:`streamer.core.gate.Gate` backed by the Silero VAD model (torch).

The ``silero-vad`` package ships its weights, so this works offline. Each
window is judged on its own: the model's recurrent state is reset at the
start of every ``decide``, because windows overlap (a 3 s window every 1 s
would otherwise feed the same audio through the state three times).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from dropformer.errors import ConfigError
from streamer.core.gate import GateDecision, level_dbfs

CHUNK_SAMPLES = {16000: 512, 8000: 256}
"""Chunk length the Silero model expects at each supported sample rate."""


def _load_model() -> Any:
    """Load the packaged Silero JIT model without changing torch's thread count.

    Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` for the whole
    process; that would slow down the emotion model, so the setting is restored.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as e:
        raise ConfigError(
            "gate.kind='silero' needs the silero-vad package: pip install 'emotion-monitor[audio]'"
            " (or use gate.kind='energy')"
        ) from e
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # silero-vad 6 uses APIs torch 2.13/importlib deprecate
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad()


class SileroGate:
    """Voice-activity gate on Silero VAD probabilities.

    Args:
        sample_rate_hz: 16000 (default) or 8000, the rates Silero supports.
        threshold: a chunk is speech when its probability is >= this (default 0.5).
        min_speech_share: share of speech chunks that makes a speech window (default 0.2).

    The model runs on ``CHUNK_SAMPLES`` chunks (512 at 16 kHz, 32 ms); a short
    last chunk is zero-padded. Calls are serialised by a lock, so one instance
    may serve several streams from different threads.
    """

    def __init__(
        self, sample_rate_hz: int = 16000, threshold: float = 0.5, min_speech_share: float = 0.2
    ) -> None:
        if sample_rate_hz not in CHUNK_SAMPLES:
            raise ConfigError(
                f"sample_rate_hz={sample_rate_hz} is not supported by Silero VAD; use 16000 or 8000"
            )
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold must lie in (0, 1), got {threshold}")
        if not 0.0 <= min_speech_share <= 1.0:
            raise ConfigError(f"min_speech_share must lie in [0, 1], got {min_speech_share}")
        self.sample_rate_hz = sample_rate_hz
        self.threshold = threshold
        self.min_speech_share = min_speech_share
        self.chunk_samples = CHUNK_SAMPLES[sample_rate_hz]
        self._model = _load_model()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Nothing carries across windows; kept for the Gate interface."""

    def chunk_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each chunk of ``samples`` (state reset first)."""
        import torch

        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {x.shape}")
        n_chunks = -(-x.size // self.chunk_samples)
        if n_chunks == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(n_chunks * self.chunk_samples, dtype=np.float32)
        padded[: x.size] = x
        chunks = torch.from_numpy(padded).reshape(n_chunks, self.chunk_samples)
        probs = np.empty(n_chunks, dtype=np.float32)
        with self._lock, torch.inference_mode():
            # One intra-op thread: this tiny model runs ~20x slower with more
            # (measured: 43 ms vs 0.5-1 s per 3 s window on 2 cores). With
            # torch's OpenMP backend the setting is per calling thread, so the
            # emotion model on another thread keeps its threads.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._model.reset_states()
                for i in range(n_chunks):
                    probs[i] = float(self._model(chunks[i : i + 1], self.sample_rate_hz))
            finally:
                torch.set_num_threads(threads)
        return probs

    def decide(self, samples: np.ndarray) -> GateDecision:
        """Judge one window."""
        probs = self.chunk_probabilities(samples)
        if probs.size == 0:
            return GateDecision(False, 0.0, level_dbfs(np.asarray(samples)))
        flags = probs >= self.threshold
        share = float(np.mean(flags))
        return GateDecision(
            share >= self.min_speech_share,
            share,
            level_dbfs(np.asarray(samples)),
            flags,
            self.chunk_samples,
        )
