"""The streaming evaluation protocol: held-out speakers as live streams through the real daemon.

An utterance classifier's accuracy is not what a monitor's user sees. Here
each test speaker's utterances become one stream: grouped into episodes of one
emotion (about ``episode_s`` seconds, as a person stays angry or sad for a
while), episodes in a seeded random order, utterances separated by short
pauses. The stream is written to a WAV file and analysed by the daemon itself
(``Daemon`` with a file source, ``realtime: false``, the daemon's default
windows, gate, per-stream normalisation and smoother), publishing to JSONL. The
score is the share of *speech time* on which the smoothed label (what the
dashboard shows: the label of the latest estimate) equals the true emotion of
the utterance being spoken. So the figure includes start-up, the lag after
each change of emotion, and everything else a live user meets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dropformer.configio import deep_merge, validate
from dropformer.data import Utterance
from dropformer.data.audio import load_audio
from streamer.config import DaemonConfig

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class Segment:
    """One utterance inside a composed stream (samples at 16 kHz)."""

    start_sample: int
    end_sample: int
    label: str
    uid: str


def compose_stream(
    utts: Sequence[Utterance], *, episode_s: float = 12.0, gap_s: float = 0.3, seed: str = "stream"
) -> tuple[np.ndarray, list[Segment]]:
    """One speaker's utterances as a stream of one-emotion episodes; returns the audio and its segments."""
    rng = random.Random(seed)
    by_label: dict[str, list[Utterance]] = {}
    for u in sorted(utts, key=lambda u: u.uid):
        by_label.setdefault(u.label, []).append(u)
    audio = {u.uid: load_audio(u.path, start_s=u.start_s, end_s=u.end_s) for u in utts}
    episodes: list[list[Utterance]] = []
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        current: list[Utterance] = []
        length = 0.0
        for u in items:
            current.append(u)
            length += len(audio[u.uid]) / SAMPLE_RATE_HZ + gap_s
            if length >= episode_s:
                episodes.append(current)
                current, length = [], 0.0
        if current:
            episodes.append(current)
    rng.shuffle(episodes)
    gap = np.zeros(round(gap_s * SAMPLE_RATE_HZ), dtype=np.float32)
    parts: list[np.ndarray] = []
    segments: list[Segment] = []
    pos = 0
    for episode in episodes:
        for u in episode:
            wav = audio[u.uid]
            segments.append(Segment(pos, pos + len(wav), u.label, u.uid))
            parts += [wav, gap]
            pos += len(wav) + len(gap)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), segments


def daemon_config(
    checkpoint: str | Path,
    wav: Path,
    events: Path,
    stream_id: str = "eval",
    overrides: dict[str, Any] | None = None,
) -> DaemonConfig:
    """The daemon's default settings, analysing ``wav`` completely (no real-time pacing) into ``events``."""
    raw = {
        "model": {"checkpoint": str(checkpoint)},
        "streams": [
            {"id": stream_id, "source": {"kind": "file", "path": str(wav), "realtime": False}}
        ],
        "publish": {
            "websocket": {"enabled": False},
            "jsonl": {"enabled": True, "path": str(events)},
        },
        "status_interval_s": None,
    }
    return validate(DaemonConfig, deep_merge(raw, overrides or {}), source="streaming evaluation")


def run_daemon_on(cfg: DaemonConfig) -> None:
    """Run the daemon until its file streams end (installs no signal handlers)."""
    from streamer.daemon import run_daemon

    asyncio.run(run_daemon(cfg, install_signals=False))


def read_estimates(events: Path) -> list[dict[str, Any]]:
    """The ``emotion.estimate`` events of a JSONL file, in ``seq`` order."""
    out = []
    with events.open(encoding="utf-8") as fh:
        for line in fh:
            ev = json.loads(line)
            if ev.get("type") == "emotion.estimate":
                out.append(ev)
    return sorted(out, key=lambda e: (e["stream_id"], e["seq"]))


def timeline_accuracy(
    estimates: Sequence[dict[str, Any]],
    segments: Sequence[Segment],
    labels: Sequence[str],
    step_ms: int = 10,
) -> dict[str, Any]:
    """Share of speech time on which the label shown (the latest estimate's) is the true one.

    Time before the first estimate counts as wrong (nothing is shown yet).
    Also per class: the share of that class's speech time labelled right.
    """
    ends = np.array([e["audio_end_ms"] for e in estimates], dtype=np.int64)
    shown = [e["label"] for e in estimates]
    right = {c: 0 for c in labels}
    total = {c: 0 for c in labels}
    halves = np.zeros((2, 2))  # [first, second half of each episode] x [right, total]
    for episode in episodes(segments):
        spans = [
            np.arange(
                s.start_sample * 1000 // SAMPLE_RATE_HZ,
                s.end_sample * 1000 // SAMPLE_RATE_HZ,
                step_ms,
            )
            for s in episode
        ]
        t = np.concatenate(spans)
        idx = np.searchsorted(ends, t, side="right") - 1  # latest estimate published by time t
        ok = np.array([i >= 0 and shown[i] == episode[0].label for i in idx], dtype=bool)
        right[episode[0].label] += int(ok.sum())
        total[episode[0].label] += len(t)
        half = len(t) // 2
        halves[0] += (ok[:half].sum(), half)
        halves[1] += (ok[half:].sum(), len(t) - half)
    speech = sum(total.values())
    per_class = {c: right[c] / total[c] for c in labels if total[c]}
    return {
        "speech_s": speech * step_ms / 1000.0,
        "accuracy": sum(right.values()) / speech if speech else float("nan"),
        "per_class": per_class,
        "balanced_accuracy": float(np.mean(list(per_class.values())))
        if per_class
        else float("nan"),
        "episode_first_half": float(halves[0, 0] / halves[0, 1]) if halves[0, 1] else float("nan"),
        "episode_second_half": float(halves[1, 0] / halves[1, 1]) if halves[1, 1] else float("nan"),
        "estimates": len(estimates),
    }


def episodes(segments: Sequence[Segment]) -> list[list[Segment]]:
    """Consecutive segments of the same label (the stream's episodes of one emotion)."""
    out: list[list[Segment]] = []
    for seg in segments:
        if out and out[-1][-1].label == seg.label:
            out[-1].append(seg)
        else:
            out.append([seg])
    return out


def evaluate_stream(
    checkpoint: str | Path,
    utts: Sequence[Utterance],
    out_dir: Path,
    name: str,
    labels: Sequence[str],
    *,
    episode_s: float = 12.0,
    seed: str = "stream",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compose ``utts`` into a stream, run it through the daemon, score the smoothed labels over time.

    Leaves ``<name>.wav``, ``<name>.segments.json`` and ``<name>.events.jsonl``
    in ``out_dir``, so any figure can be re-checked and replayed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    wave, segments = compose_stream(utts, episode_s=episode_s, seed=f"{seed}:{name}")
    wav, events = out_dir / f"{name}.wav", out_dir / f"{name}.events.jsonl"
    sf.write(wav, wave, SAMPLE_RATE_HZ, subtype="PCM_16")
    (out_dir / f"{name}.segments.json").write_text(
        json.dumps([s.__dict__ for s in segments], indent=0)
    )
    events.unlink(missing_ok=True)
    run_daemon_on(daemon_config(checkpoint, wav, events, overrides=overrides))
    result = timeline_accuracy(read_estimates(events), segments, labels)
    result.update(
        {"name": name, "audio_s": len(wave) / SAMPLE_RATE_HZ, "utterances": len(segments)}
    )
    log.info(
        "stream %s: smoothed label right on %.1f%% of %.0f s of speech",
        name,
        100 * result["accuracy"],
        result["speech_s"],
    )
    return result


def streaming_table(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """Markdown: one row per stream, then the mean and the speech-time-weighted total."""
    lines = [
        "| stream | speech s | label right % | "
        + " | ".join(f"{c} %" for c in labels)
        + " | 1st half of episodes % | 2nd half % |",
        "|---|---|---|" + "---|" * (len(labels) + 2),
    ]
    for r in results:
        cells = [f"{100 * r['per_class'][c]:.1f}" if c in r["per_class"] else "-" for c in labels]
        cells += [f"{100 * r[k]:.1f}" for k in ("episode_first_half", "episode_second_half")]
        lines.append(
            f"| {r['name']} | {r['speech_s']:.0f} | {100 * r['accuracy']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    weight = sum(r["speech_s"] for r in results)
    pooled = (
        sum(r["accuracy"] * r["speech_s"] for r in results) / weight if weight else float("nan")
    )
    mean = float(np.mean([r["accuracy"] for r in results])) if results else float("nan")
    lines.append(f"| **mean over streams** | | **{100 * mean:.1f}** |" + " |" * (len(labels) + 2))
    lines.append(
        f"| **all speech time** | {weight:.0f} | **{100 * pooled:.1f}** |"
        + " |" * (len(labels) + 2)
    )
    return "\n".join(lines)
