"""Pictures of an analysed recording (``emotion-monitor analyze --report``) and an index page.

One PNG per recording and stream (the mix, or each channel): the waveform envelope,
the smoothed class scores over time (stacked, one stable colour per label whatever the
label set), the utterances coloured by label, the transitions marked, and a title with
the file name and the summary figures. :func:`write_index` links every PNG and
summary row from one ``index.html``. matplotlib (the ``train`` extra) draws them, with
the Agg back end; without it :func:`require_matplotlib` says what to install.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from dropformer.errors import ConfigError
from streamer.core.events import EmotionEstimate, EmotionTransition, EmotionUtterance

if TYPE_CHECKING:
    from streamer.analysis import FileAnalysis

ENVELOPE_BINS = 1500
"""Points of the waveform envelope (peaks per bin)."""
KNOWN_COLOURS = {
    "neutral": "#9e9e9e",
    "calm": "#80cbc4",
    "happy": "#f4b400",
    "joy": "#f4b400",
    "angry": "#d93025",
    "anger": "#d93025",
    "sad": "#1a73e8",
    "sadness": "#1a73e8",
    "fear": "#8e24aa",
    "fearful": "#8e24aa",
    "disgust": "#2e7d32",
    "surprise": "#ff7043",
    "surprised": "#ff7043",
    "boredom": "#795548",
    "frustrated": "#c2185b",
    "excited": "#ffa000",
}
_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#bcbd22",
)  # fmt: skip


def label_colour(label: str) -> str:
    """The colour of ``label``: fixed for common emotion names, else chosen from the label
    text alone (so it is the same in every picture and for any label set)."""
    known = KNOWN_COLOURS.get(label.lower())
    if known is not None:
        return known
    return _PALETTE[zlib.crc32(label.encode("utf-8")) % len(_PALETTE)]


def require_matplotlib() -> None:
    """Raise :class:`ConfigError` saying what to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "analyze.report (--report) needs matplotlib, which is not installed: "
            "pip install 'emotion-monitor[train]' (or pip install matplotlib), or leave --report off"
        ) from exc


def envelope(
    path: Path, channel: int | None, bins: int = ENVELOPE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and peak amplitude per bin of ``path`` (one ``channel``, or the channels'
    mean), read block by block."""
    with sf.SoundFile(str(path)) as f:
        frames, rate = f.frames, f.samplerate
        per_bin = max(1, -(-frames // bins))
        peaks: list[float] = []
        for block in f.blocks(blocksize=per_bin * 64, dtype="float32", always_2d=True):
            mono = block[:, channel] if channel is not None else block.mean(axis=1)
            n = len(mono) // per_bin * per_bin
            if n:
                peaks.extend(np.abs(mono[:n]).reshape(-1, per_bin).max(axis=1).tolist())
            if len(mono) > n:
                peaks.append(float(np.abs(mono[n:]).max()))
    amp = np.asarray(peaks, dtype=np.float32)
    times = (np.arange(len(amp)) + 0.5) * per_bin / rate
    return times, amp


def _title(fa: FileAnalysis, summary: dict[str, Any]) -> str:
    name = fa.input.path.name + (f" [{summary['channel']}]" if summary.get("channel") else "")
    dominant = summary.get("dominant_label")
    share = (summary.get("label_share") or {}).get(dominant, 0.0) if dominant else 0.0
    parts = [f"speech {summary['speech_s']:.1f} s of {summary['duration_s']:.1f} s"]
    if dominant:
        parts.append(f"mostly {dominant} ({100 * share:.0f}%)")
    parts.append(f"{summary['transitions']} transition(s)")
    if summary.get("arousal_mean") is not None:
        parts.append(
            f"arousal {summary['arousal_mean']:+.2f}, valence {summary['valence_mean']:+.2f}"
        )
    if summary.get("utterances"):
        parts.append(f"{summary['utterances']} utterance(s)")
    return f"{name}\n" + " · ".join(parts)


def draw_report(fa: FileAnalysis, stream_index: int, out: Path) -> Path:
    """Draw stream ``stream_index`` of ``fa`` into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from streamer.analysis import parse_events

    stream = fa.streams[stream_index]
    events = [e for e in parse_events(fa.events) if e.stream_id == stream.stream_id]
    estimates = sorted((e for e in events if isinstance(e, EmotionEstimate)), key=lambda e: e.seq)
    transitions = [e for e in events if isinstance(e, EmotionTransition) and e.from_label]
    utterances = [e for e in events if isinstance(e, EmotionUtterance)]
    labels = list(fa.labels)
    channel_index = None if stream.channel is None else stream_index  # stream k is channel k
    times, amp = envelope(fa.input.path, channel_index)
    end_s = max(fa.duration_s, 0.1)

    fig, (ax_wave, ax_scores, ax_utt) = plt.subplots(
        3, 1, figsize=(10, 5.2), dpi=100, sharex=True,
        gridspec_kw={"height_ratios": [1, 3, 0.7]},
    )  # fmt: skip
    ax_wave.fill_between(times, -amp, amp, color="#5f6368", linewidth=0)
    ax_wave.set_ylim(
        -1.05 * max(float(amp.max(initial=0.0)), 1e-3),
        1.05 * max(float(amp.max(initial=0.0)), 1e-3),
    )
    ax_wave.set_yticks([])
    ax_wave.set_ylabel("audio", fontsize=8)

    if estimates:
        t = np.array([0.0] + [e.audio_end_ms / 1000.0 for e in estimates])
        stack = np.array([[e.scores.get(label, 0.0) for e in estimates] for label in labels])
        stack = np.concatenate([stack[:, :1], stack], axis=1)  # the first window's scores from 0
        speech = np.array([True] + [e.speech for e in estimates])
        ax_scores.stackplot(
            t, stack, colors=[label_colour(lb) for lb in labels], step="pre", alpha=0.9,
            labels=labels,
        )  # fmt: skip
        for k in range(1, len(t)):  # silence: greyed out
            if not speech[k]:
                ax_scores.axvspan(t[k - 1], t[k], color="white", alpha=0.6, linewidth=0)
    else:
        ax_scores.text(0.5, 0.5, "no speech found", ha="center", va="center",
                       transform=ax_scores.transAxes)  # fmt: skip
    for tr in transitions:
        x = tr.audio_ms / 1000.0
        for ax in (ax_wave, ax_scores, ax_utt):
            ax.axvline(x, color="black", linewidth=1.0, linestyle="--")
        ax_scores.text(x, 1.01, f"→{tr.to_label}", fontsize=7, rotation=0,
                       transform=ax_scores.get_xaxis_transform(), ha="left", va="bottom")  # fmt: skip
    ax_scores.set_ylim(0, 1)
    ax_scores.set_ylabel("smoothed scores", fontsize=8)
    ax_scores.legend(
        handles=[Patch(color=label_colour(lb), label=lb) for lb in labels],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
    )  # fmt: skip

    spans = [
        (u.audio_start_ms / 1000.0, (u.audio_end_ms - u.audio_start_ms) / 1000.0)
        for u in utterances
    ]
    if spans:
        ax_utt.broken_barh(spans, (0, 1), facecolors=[label_colour(u.label) for u in utterances])
        for u, (x, w) in zip(utterances, spans):
            ax_utt.text(x + w / 2, 0.5, u.label, ha="center", va="center", fontsize=7)
    else:
        ax_utt.text(0.5, 0.5, "no utterance events", ha="center", va="center", fontsize=7,
                    color="#5f6368", transform=ax_utt.transAxes)  # fmt: skip
    ax_utt.set_ylim(0, 1)
    ax_utt.set_yticks([])
    ax_utt.set_ylabel("utterances", fontsize=8)
    ax_utt.set_xlim(0, end_s)
    ax_utt.set_xlabel("time (s)")
    fig.suptitle(_title(fa, stream.summary), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def report_name(fa: FileAnalysis, stream_index: int) -> str:
    """``report.png`` for a single stream, ``report.<channel>.png`` per channel."""
    channel = fa.streams[stream_index].channel
    return "report.png" if channel is None else f"report.{channel}.png"


def draw_reports(fa: FileAnalysis, folder: Path) -> list[Path]:
    """One PNG per stream of ``fa`` in ``folder``."""
    require_matplotlib()
    return [draw_report(fa, k, folder / report_name(fa, k)) for k in range(len(fa.streams))]


INDEX_COLUMNS = ("name", "channel", "duration_s", "speech_s", "dominant_label", "transitions",
                 "arousal_mean", "valence_mean", "utterances", "error")  # fmt: skip


def write_index(
    out_dir: Path, rows: Sequence[dict[str, Any]], reports: Sequence[tuple[str, Sequence[str]]]
) -> Path:
    """``index.html`` in ``out_dir``: the summary rows as a table, each linking its
    recording's ``summary.json``, and every PNG below (``reports``: name, PNG paths
    relative to ``out_dir``)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in INDEX_COLUMNS)
    body = []
    for r in rows:
        cells = []
        for c in INDEX_COLUMNS:
            value = r.get(c)
            text = "" if value is None else str(value)
            if c == "name" and not r.get("error"):
                text = f'<a href="{esc(str(r["name"]))}/summary.json">{esc(text)}</a>'
            else:
                text = esc(text)
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    figures = []
    for name, files in reports:
        for png in files:
            figures.append(
                f'<figure><a href="{esc(png)}"><img src="{esc(png)}" width="800" '
                f'alt="{esc(name)}"></a><figcaption>{esc(png)}</figcaption></figure>'
            )
    doc = (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>emotion-monitor analysis</title>'
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>\n"
        "<h1>Analysis</h1>\n<p>Expressed emotion in the voice as the model heard it, not what a "
        "person feels. Columns: docs/analyze.md. All rows: "
        '<a href="summary.csv">summary.csv</a>, utterances: <a href="utterances.csv">utterances.csv</a>.</p>\n'
        f"<table><tr>{head}</tr>\n"
        + "\n".join(body)
        + "\n</table>\n"
        + "\n".join(figures)
        + "\n</body></html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
