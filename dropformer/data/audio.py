"""Load any corpus file as 16 kHz mono float32 (soundfile + soxr; ffmpeg for video)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dropformer.errors import AudioError, DataError

SAMPLE_RATE_HZ = 16_000
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm"}


def load_audio(
    path: str | Path,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    start_s: float | None = None,
    end_s: float | None = None,
) -> np.ndarray:
    """Return mono float32 samples of ``path`` at ``sample_rate_hz``, optionally a time slice."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file {str(p)!r} does not exist; check data.root and the file list")
    if p.suffix.lower() in VIDEO_SUFFIXES:
        wav = decode_with_ffmpeg(p, sample_rate_hz)
        sr = sample_rate_hz
    else:
        try:
            wav, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(f"cannot decode {str(p)!r}: {exc}; convert it to WAV/FLAC") from exc
        wav = wav.mean(axis=1)
        if sr != sample_rate_hz:
            wav = soxr.resample(wav, sr, sample_rate_hz).astype(np.float32)
    if start_s is not None or end_s is not None:
        a = int(round((start_s or 0.0) * sample_rate_hz))
        b = None if end_s is None else int(round(end_s * sample_rate_hz))
        wav = wav[a:b]
    if wav.size == 0:
        raise AudioError(
            f"{str(p)!r} holds no samples (or an empty slice); remove it from the list"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


def decode_with_ffmpeg(path: Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode the audio track of a video (or any file ffmpeg reads) to mono float32."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(
            "ffmpeg is not installed; install it (apt-get install ffmpeg) to read MELD videos"
        )
    cmd = [
        exe,
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate_hz),
        "-f",
        "f32le",
        "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError(f"ffmpeg cannot decode {str(path)!r}: {err[0]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()
