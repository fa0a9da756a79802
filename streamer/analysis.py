"""Recordings through the live daemon, as fast as it goes: timelines, utterance tables, summaries.

:class:`Analyzer` runs one recording at a time through :class:`streamer.daemon.Daemon`
itself (file sources with ``realtime: false``, the configured model, windows, gate and
smoother), capturing what the daemon publishes with :class:`EventCollector`, a publisher
like the others. Nothing of the pipeline is copied here: the tables and summaries are
built from the published events alone (:func:`utterance_rows`, :func:`summarize`), so
they say what a live subscriber would have seen.

``emotion-monitor analyze`` (:mod:`streamer.commands.analyze`) and ``POST /v1/analyze``
(:mod:`streamer.http_api`) use it; docs/analyze.md describes the outputs column by column.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from dropformer.errors import AudioError, DataError
from streamer.config import (
    DaemonConfig,
    FileSourceConfig,
    JsonlConfig,
    MqttConfig,
    PublishConfig,
    StreamConfig,
    WebhookConfig,
    WebSocketConfig,
)
from streamer.core.events import (
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Event,
    StreamStatus,
    parse_event,
)
from streamer.publishers.base import Message, PublisherStats
from streamer.sources.base import OUTPUT_RATE_HZ

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
"""Files a folder is searched for (what libsndfile decodes)."""
MANIFEST_SUFFIXES = (".csv", ".jsonl")
CLIPPED_SHARE = 0.001
"""A window whose share of clipped samples exceeds this counts as clipped."""
LOW_SNR_DB = 10.0
"""A window with an estimated SNR below this (dB) counts as noisy."""
QUALITY_KEYS = ("level_dbfs", "clipping", "snr_db", "bandwidth_hz", "telephone_band")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AnalysisInput:
    """One recording to analyse.

    Attributes:
        path: the audio file.
        name: its results' folder name (unique among the inputs of one run).
        extra: columns a manifest gave for it (e.g. ``label``, ``speaker``), carried into
            the summary rows.
    """

    path: Path
    name: str
    extra: dict[str, str] = field(default_factory=dict)


def find_inputs(target: str | Path) -> tuple[list[AnalysisInput], bool]:
    """The recordings ``target`` names: one audio file, a folder searched recursively for
    audio files, or a manifest (``.csv`` with a ``path`` column, the training manifests'
    ``path,label,speaker[,split]`` format; or ``.jsonl``, one ``{"path": ...}`` per line;
    paths relative to the manifest). Returns them and whether ``target`` was a collection
    (folder or manifest). Raises :class:`DataError` naming the problem and the fix."""
    p = Path(target)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
        )
        if not files:
            raise DataError(
                f"folder {str(p)!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); "
                "pass a folder of recordings, an audio file or a manifest"
            )
        return _named([(f, f.relative_to(p).with_suffix(""), {}) for f in files]), True
    if not p.exists():
        raise DataError(
            f"{str(p)!r} does not exist; pass an audio file, a folder of recordings or a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)})"
        )
    if p.suffix.lower() in MANIFEST_SUFFIXES:
        return _named(read_manifest(p)), True
    return _named([(p, Path(p.stem), {})]), False


def read_manifest(path: Path) -> list[tuple[Path, Path, dict[str, str]]]:
    """``(audio path, name, other columns)`` per row of a CSV or JSONL manifest."""
    rows: list[tuple[str, dict[str, str]]] = []
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(fh)
                if "path" not in (reader.fieldnames or []):
                    raise DataError(
                        f"manifest {str(path)!r} has no 'path' column; the header must name it, "
                        "e.g. path,label,speaker"
                    )
                for row in reader:
                    rows.append(
                        (
                            (row.get("path") or "").strip(),
                            {k: (v or "") for k, v in row.items() if k and k != "path"},
                        )
                    )
            else:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"manifest {str(path)!r} line {lineno} is not JSON ({exc}); "
                            'write one object per line, e.g. {"path": "a.wav"}'
                        ) from exc
                    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
                        raise DataError(
                            f'manifest {str(path)!r} line {lineno} has no "path" string; '
                            'write one object per line, e.g. {"path": "a.wav"}'
                        )
                    rows.append((doc["path"], {k: str(v) for k, v in doc.items() if k != "path"}))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {str(path)!r} cannot be read ({exc}); fix the file") from exc
    if not rows:
        raise DataError(f"manifest {str(path)!r} lists no recordings; add rows with a path")
    out = []
    for n, (rel, extra) in enumerate(rows, 1):
        name = Path(rel).name
        if not name or name in (".", ".."):
            raise DataError(
                f"manifest {str(path)!r}: recording {n} has no file name in its path {rel!r}; "
                "give each row the path of an audio file"
            )
        out.append((path.parent / rel, Path(rel).with_suffix(""), extra))
    return out


def _named(items: Iterable[tuple[Path, Path, dict[str, str]]]) -> list[AnalysisInput]:
    """Inputs with unique folder names (``a/b.wav`` -> ``a__b``; repeats get ``-2``, ``-3``)."""
    seen: dict[str, int] = {}
    out = []
    for path, rel, extra in items:
        base = safe_name("__".join(part for part in rel.parts if part not in ("", ".", "..")))
        n = seen[base] = seen.get(base, 0) + 1
        out.append(AnalysisInput(path, base if n == 1 else f"{base}-{n}", extra))
    return out


def safe_name(text: str, limit: int = 96) -> str:
    """``text`` as a stream id and folder name: letters, digits and ``_ . -`` only."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "recording"
    return name[:limit]


# ---------------------------------------------------------------------- capturing events
class EventCollector:
    """A publisher that keeps what the daemon publishes: each event as the daemon encoded it
    (``lines``, the timeline) and as an object (``events``)."""

    def __init__(self) -> None:
        self.stats = PublisherStats()
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> EventCollector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def publish(self, message: Message) -> None:
        self.stats.track(message.stream_id)
        self.lines.append(message.text)
        self.events.append(dict(message.event))
        self.stats.published += 1


class _Borrowed:
    """A started backend lent to one daemon: the daemon enters and leaves it, the owner keeps it."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def __aenter__(self) -> _Borrowed:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


# ------------------------------------------------------------------------------ results
@dataclass
class StreamResult:
    """One analysed stream of a recording (the mix, or one channel)."""

    stream_id: str
    channel: str | None
    summary: dict[str, Any]
    utterances: list[dict[str, Any]]


@dataclass
class FileAnalysis:
    """What the daemon published for one recording, and the tables built from it."""

    input: AnalysisInput
    labels: list[str]
    model: dict[str, Any]
    lines: list[str]
    events: list[dict[str, Any]]
    streams: list[StreamResult]
    duration_s: float
    channels: int
    sample_rate_hz: int

    def summary_doc(self) -> dict[str, Any]:
        """``summary.json``: the recording and one summary per stream."""
        return {
            "file": str(self.input.path),
            "name": self.input.name,
            **({"manifest": self.input.extra} if self.input.extra else {}),
            "duration_s": round(self.duration_s, 3),
            "channels": self.channels,
            "sample_rate_hz": self.sample_rate_hz,
            "labels": self.labels,
            "model": self.model,
            "streams": [s.summary for s in self.streams],
        }

    def summary_rows(self) -> list[dict[str, Any]]:
        """One flat row per stream (``summary.csv``)."""
        return [
            summary_row(self.input, s.summary, self.labels, self.duration_s) for s in self.streams
        ]

    def utterance_table(self) -> list[dict[str, Any]]:
        """Every stream's utterances, flat (``utterances.csv``)."""
        return [
            utterance_csv_row(self.input, r, self.labels)
            for s in self.streams
            for r in s.utterances
        ]


def parse_events(events: Iterable[dict[str, Any]]) -> list[Event]:
    """The events as dataclasses (events of other types than the schema's are skipped)."""
    out = []
    for ev in events:
        try:
            out.append(parse_event(ev))
        except ValueError:
            log.debug("not an event of the schema: %r", ev.get("type"))
    return out


def utterance_rows(events: Sequence[Event], channel: str | None = None) -> list[dict[str, Any]]:
    """One row per ``emotion.utterance`` event, in order (empty when the daemon emits none)."""
    rows = []
    for ev in events:
        if not isinstance(ev, EmotionUtterance):
            continue
        rows.append(
            {
                "stream_id": ev.stream_id,
                "channel": channel,
                "seq": ev.seq,
                "start_s": ev.audio_start_ms / 1000.0,
                "end_s": ev.audio_end_ms / 1000.0,
                "duration_s": (ev.audio_end_ms - ev.audio_start_ms) / 1000.0,
                "label": ev.label,
                "confidence": ev.confidence,
                "scores": dict(ev.scores),
                "arousal": ev.arousal,
                "valence": ev.valence,
                "truncated": ev.truncated,
                "quality": ev.quality.to_dict() if ev.quality is not None else None,
            }
        )
    return rows


def summarize(
    events: Sequence[Event], labels: Sequence[str], channel: str | None = None
) -> dict[str, Any]:
    """The summary of ONE stream's events.

    Each estimate stands for the audio it adds to the previous one (its hop; the first,
    its whole window). Over the speech estimates: the share of speech time per smoothed
    label, the longest episode per label (a run of speech estimates with the same
    smoothed label; silent estimates neither end nor lengthen it), time-weighted mean
    arousal and valence. Transitions are the daemon's ``emotion.transition`` events
    (the first label, announced ``from: null``, is not a transition). Quality shares
    count the estimates that carry ``quality``: ``null`` when none does.
    """
    estimates = sorted((e for e in events if isinstance(e, EmotionEstimate)), key=lambda e: e.seq)
    stream_id = next((e.stream_id for e in events), "")
    by_label_ms = dict.fromkeys(labels, 0)
    longest_ms = dict.fromkeys(labels, 0)
    speech_ms = 0
    arousal = valence = 0.0
    run_label: str | None = None
    run_ms = 0
    prev_end = 0
    quality = {"windows": 0, "clipped": 0, "low_snr": 0, "telephone_band": 0, "level": 0.0}
    for e in estimates:
        if e.quality is not None:
            q = e.quality
            quality["windows"] += 1
            quality["clipped"] += q.clipping > CLIPPED_SHARE
            quality["low_snr"] += q.snr_db < LOW_SNR_DB
            quality["telephone_band"] += bool(q.telephone_band)
            quality["level"] += q.level_dbfs
        span = e.audio_end_ms - max(e.audio_start_ms, prev_end)
        prev_end = max(prev_end, e.audio_end_ms)
        if not e.speech or span <= 0:
            continue
        speech_ms += span
        by_label_ms[e.label] = by_label_ms.get(e.label, 0) + span
        arousal += e.arousal * span
        valence += e.valence * span
        if e.label != run_label:
            run_label, run_ms = e.label, 0
        run_ms += span
        longest_ms[e.label] = max(longest_ms.get(e.label, 0), run_ms)
    transitions = [
        {
            "audio_s": t.audio_ms / 1000.0,
            "from": t.from_label,
            "to": t.to_label,
            "confidence": t.confidence,
        }
        for t in events
        if isinstance(t, EmotionTransition) and t.from_label is not None
    ]
    statuses = [s for s in events if isinstance(s, StreamStatus)]
    duration_ms = max([s.audio_ms for s in statuses] + [prev_end])
    final = statuses[-1] if statuses else None
    share = {k: (v / speech_ms if speech_ms else 0.0) for k, v in by_label_ms.items()}
    n_q = quality["windows"]
    utterances = [e for e in events if isinstance(e, EmotionUtterance)]
    utt_ms: dict[str, int] = {}
    for u in utterances:
        utt_ms[u.label] = utt_ms.get(u.label, 0) + u.audio_end_ms - u.audio_start_ms
    utt_total_ms = sum(utt_ms.values())
    return {
        "stream_id": stream_id,
        "channel": channel,
        "duration_s": duration_ms / 1000.0,
        "speech_s": speech_ms / 1000.0,
        "speech_share": speech_ms / duration_ms if duration_ms else 0.0,
        "estimates": len(estimates),
        "utterances": len(utterances),
        "utterance_s": utt_total_ms / 1000.0,
        "utterance_label_share": {
            k: round(v / utt_total_ms, 4) for k, v in utt_ms.items() if utt_total_ms
        },
        "dominant_label": max(share, key=lambda k: share[k]) if speech_ms else None,
        "label_share": {k: round(v, 4) for k, v in share.items()},
        "longest_episode_s": {k: v / 1000.0 for k, v in longest_ms.items()},
        "transitions": len(transitions),
        "transition_list": transitions,
        "arousal_mean": round(arousal / speech_ms, 4) if speech_ms else None,
        "valence_mean": round(valence / speech_ms, 4) if speech_ms else None,
        "quality": {
            "windows": n_q,
            "clipped_share": round(quality["clipped"] / n_q, 4),
            "low_snr_share": round(quality["low_snr"] / n_q, 4),
            "telephone_band_share": round(quality["telephone_band"] / n_q, 4),
            "level_dbfs_mean": round(quality["level"] / n_q, 2),
        }
        if n_q
        else None,
        "final_state": final.state if final is not None else None,
        "counters": dict(final.counters) if final is not None else {},
    }


def summary_row(
    item: AnalysisInput,
    summary: dict[str, Any] | None,
    labels: Sequence[str],
    duration_s: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A stream's summary as one flat CSV row (``error`` for a recording that failed)."""
    s = summary or {}
    q = s.get("quality") or {}
    row: dict[str, Any] = {
        "file": str(item.path),
        "name": item.name,
        "stream_id": s.get("stream_id"),
        "channel": s.get("channel"),
        "duration_s": s.get("duration_s", duration_s),
        "speech_s": s.get("speech_s"),
        "speech_share": _round(s.get("speech_share")),
        "utterance_s": s.get("utterance_s"),
        "dominant_label": s.get("dominant_label"),
    }
    for label in labels:
        row[f"share_{label}"] = (s.get("label_share") or {}).get(label)
    for label in labels:
        row[f"longest_{label}_s"] = (s.get("longest_episode_s") or {}).get(label)
    row.update(
        {
            "transitions": s.get("transitions"),
            "arousal_mean": s.get("arousal_mean"),
            "valence_mean": s.get("valence_mean"),
            "clipped_share": q.get("clipped_share"),
            "low_snr_share": q.get("low_snr_share"),
            "telephone_band_share": q.get("telephone_band_share"),
            "utterances": s.get("utterances"),
            "estimates": s.get("estimates"),
        }
    )
    for key, value in item.extra.items():
        row[f"manifest_{key}"] = value
    row["error"] = error
    return row


def utterance_csv_row(
    item: AnalysisInput, row: dict[str, Any], labels: Sequence[str]
) -> dict[str, Any]:
    """An utterance row flat: scores as ``score_<label>``, quality as its own columns."""
    flat: dict[str, Any] = {"file": str(item.path), "name": item.name}
    flat.update({k: v for k, v in row.items() if k not in ("scores", "quality")})
    for label in labels:
        flat[f"score_{label}"] = row["scores"].get(label)
    q = row.get("quality") or {}
    for key in QUALITY_KEYS:
        flat[key] = q.get(key)
    return flat


def _round(x: Any, digits: int = 4) -> Any:
    return round(x, digits) if isinstance(x, float) else x


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """Rows as CSV with a header (the union of their keys in first-seen order after
    ``columns``); ``None`` is written as an empty cell."""
    header: dict[str, None] = dict.fromkeys(columns)
    for r in rows:
        header.update(dict.fromkeys(r))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(header), restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})


UTTERANCE_COLUMNS = (
    "file", "name", "stream_id", "channel", "seq", "start_s", "end_s", "duration_s", "label",
    "confidence",
)  # fmt: skip


def write_outputs(fa: FileAnalysis, folder: Path) -> list[Path]:
    """Write a recording's results into ``folder``: ``timeline.jsonl``, ``utterances.csv``,
    ``utterances.json``, ``summary.json``, ``summary.csv``. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    timeline = folder / "timeline.jsonl"
    timeline.write_text("".join(line + "\n" for line in fa.lines), encoding="utf-8")
    written.append(timeline)
    utterances = [r for s in fa.streams for r in s.utterances]
    path = folder / "utterances.json"
    path.write_text(json.dumps(utterances, indent=1), encoding="utf-8")
    written.append(path)
    path = folder / "utterances.csv"
    write_csv(path, fa.utterance_table(), UTTERANCE_COLUMNS)
    written.append(path)
    path = folder / "summary.json"
    path.write_text(json.dumps(fa.summary_doc(), indent=1), encoding="utf-8")
    written.append(path)
    path = folder / "summary.csv"
    write_csv(path, fa.summary_rows())
    written.append(path)
    return written


# ------------------------------------------------------------------------------ running
class Analyzer:
    """Analyse recordings through the daemon, one after another, with one model.

    ``async with Analyzer(cfg) as a: fa = await a.analyze(item)``. The model is loaded once
    when entered (from ``cfg.model``; or pass a started ``backend`` to share one) and lent
    to a fresh :class:`Daemon` per recording, whose config is ``cfg`` with the recording as
    its file stream(s) (``realtime: false``) and no network publishers, so the windows,
    gate, smoother and alert rules are the configured ones.
    """

    def __init__(self, cfg: DaemonConfig, *, backend: Any = None) -> None:
        self.cfg = cfg
        self._own = backend is None
        self.backend: Any = backend
        self._told_agent = False

    async def __aenter__(self) -> Analyzer:
        if self._own:
            from streamer import wiring

            self.backend = wiring.make_worker(
                self.cfg.model,
                self.cfg.worker,
                round(self.cfg.windowing.window_s * OUTPUT_RATE_HZ),
            )
            await self.backend.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._own and self.backend is not None:
            await self.backend.__aexit__(None, None, None)

    @property
    def labels(self) -> list[str]:
        return list(self.backend.labels)

    def streams_for(
        self, item: AnalysisInput, channels: int
    ) -> list[tuple[str, int | None, str | None]]:
        """``(stream id, channel index, channel name)`` of each stream of a recording with
        ``channels`` channels. Raises :class:`AudioError` when the channels do not fit."""
        a = self.cfg.analyze
        sid = safe_name(item.name)
        if a.channels == "mix":
            return [(sid, None, None)]
        if channels < 2:
            raise AudioError(
                f"audio file {str(item.path)!r} has 1 channel, so there is nothing to separate; "
                "use --channels mix (or a stereo call recording)"
            )
        names = a.channel_names or [f"ch{k}" for k in range(channels)]
        if len(names) != channels:
            raise AudioError(
                f"audio file {str(item.path)!r} has {channels} channels but "
                f"analyze.channel_names names {len(names)} ({names}); give one name per channel"
            )
        agent = self.cfg.ingest.twilio.outbound_name
        if agent in names and not self.cfg.ingest.analyse_agent and not self._told_agent:
            self._told_agent = True  # once per run, not once per recording
            log.warning(
                "channel %r is not analysed: emotion recognition of workers is prohibited in "
                "the EU (AI Act Art. 5(1)(f)); set ingest.analyse_agent=true where it is lawful",
                agent,
            )
        return [
            (f"{sid}.{name}", k, name)
            for k, name in enumerate(names)
            if name != agent or self.cfg.ingest.analyse_agent
        ]

    def daemon_config(
        self, path: Path, streams: Sequence[tuple[str, int | None, str | None]]
    ) -> DaemonConfig:
        """The daemon's config for one recording (see the class docstring)."""
        return self.cfg.model_copy(
            update={
                "streams": [
                    StreamConfig(
                        id=sid,
                        source=FileSourceConfig(path=str(path), realtime=False, channel=k),
                    )
                    for sid, k, _ in streams
                ],
                "publish": PublishConfig(
                    websocket=WebSocketConfig(enabled=False),
                    mqtt=MqttConfig(enabled=False),
                    jsonl=JsonlConfig(enabled=False),
                ),
                "ingest": self.cfg.ingest.model_copy(
                    update={
                        "enabled": False,
                        "twilio": self.cfg.ingest.twilio.model_copy(update={"enabled": False}),
                    }
                ),
                "alerts": self.cfg.alerts.model_copy(update={"webhook": WebhookConfig()}),
                "status_interval_s": None,
                "duration_s": None,
            }
        )

    async def analyze(
        self, item: AnalysisInput, *, stop: asyncio.Event | None = None
    ) -> FileAnalysis:
        """Run ``item`` through the daemon and build its tables.

        Raises :class:`AudioError` naming the file and the fix when it is missing, cannot
        be decoded or its channels do not fit ``analyze.channels``.
        """
        from streamer.daemon import Daemon
        from streamer.sources.file import open_audio

        if not item.path.is_file():
            raise AudioError(
                f"audio file {str(item.path)!r} does not exist; fix the path (or the manifest row)"
            )
        with open_audio(item.path) as f:
            channels, rate, frames = f.channels, f.samplerate, f.frames
        streams = self.streams_for(item, channels)
        daemon = Daemon(self.daemon_config(item.path, streams), backend=_Borrowed(self.backend))
        collector = daemon.hub.add(EventCollector(), "timeline")
        async with daemon:
            await daemon.run(stop)
        if daemon.failures:
            raise AudioError("; ".join(daemon.failures.values()))
        if stop is not None and stop.is_set():
            raise AudioError(f"the analysis of {str(item.path)!r} was stopped before its end")
        parsed = parse_events(collector.events)
        results = []
        for sid, _, name in streams:
            mine = [e for e in parsed if e.stream_id == sid]
            results.append(
                StreamResult(
                    sid, name, summarize(mine, self.labels, name), utterance_rows(mine, name)
                )
            )
        return FileAnalysis(
            input=item,
            labels=self.labels,
            model=dict(self.backend.model_info),
            lines=collector.lines,
            events=collector.events,
            streams=results,
            duration_s=frames / rate,
            channels=channels,
            sample_rate_hz=rate,
        )


# ------------------------------------------------------------------------ many recordings
@dataclass
class BatchResult:
    """What a run over many recordings produced."""

    summary_rows: list[dict[str, Any]] = field(default_factory=list)
    utterance_rows: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Recording (its path) -> why it failed."""
    reports: list[tuple[str, list[str]]] = field(default_factory=list)
    """(recording name, its PNG files relative to the output folder)."""
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Done:
    item: AnalysisInput
    summary_rows: list[dict[str, Any]]
    utterance_rows: list[dict[str, Any]]
    pngs: list[str]
    labels: list[str]
    error: str | None = None


async def _analyze_and_write(
    analyzer: Analyzer, item: AnalysisInput, out_dir: Path, report: bool
) -> _Done:
    """Analyse one recording and write its folder (an expected failure becomes ``error``)."""
    try:
        fa = await analyzer.analyze(item)
        folder = out_dir / item.name
        write_outputs(fa, folder)
        pngs = []
        if report:
            from streamer.report import draw_reports

            pngs = [str(p.relative_to(out_dir)) for p in draw_reports(fa, folder)]
        return _Done(item, fa.summary_rows(), fa.utterance_table(), pngs, fa.labels)
    except (AudioError, DataError) as exc:
        return _Done(item, [], [], [], analyzer.labels, str(exc))


class _ProcessSession:
    """A worker process's analyzer: its own event loop and model, kept between recordings."""

    loop: asyncio.AbstractEventLoop | None = None
    analyzer: Analyzer | None = None

    @classmethod
    def start(cls, cfg_doc: dict[str, Any], log_level: int) -> None:
        logging.basicConfig(
            level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        quiet_daemon_logs(log_level)
        cls.loop = asyncio.new_event_loop()
        cls.analyzer = Analyzer(DaemonConfig.model_validate(cfg_doc))
        cls.loop.run_until_complete(cls.analyzer.__aenter__())

    @classmethod
    def run(cls, item: AnalysisInput, out_dir: Path, report: bool) -> _Done:
        assert cls.loop is not None and cls.analyzer is not None
        return cls.loop.run_until_complete(_analyze_and_write(cls.analyzer, item, out_dir, report))


def quiet_daemon_logs(level: int) -> None:
    """The daemon's per-stream INFO lines (file opened, shutdown summary) once per recording
    would bury the progress bar: they show at DEBUG only."""
    if level > logging.DEBUG:
        for name in ("streamer.daemon", "streamer.sources", "streamer.wiring", "streamer.worker"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def analyze_batch(
    cfg: DaemonConfig,
    inputs: Sequence[AnalysisInput],
    out_dir: Path,
    *,
    report: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> BatchResult:
    """Analyse ``inputs`` into ``out_dir`` (one folder each), ``workers`` at a time (each in its
    own process with its own model when more than one), with a progress bar over recordings.
    A recording that fails is logged and counted in ``failed``; the others go on."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    bar = tqdm(total=len(inputs), unit="file", desc="analyse", disable=not progress or None)

    def done(d: _Done) -> None:
        result.labels = result.labels or d.labels
        if d.error is not None:
            log.error("%s: %s", d.item.path, d.error)
            result.failed[str(d.item.path)] = d.error
            result.summary_rows.append(summary_row(d.item, None, d.labels, error=d.error))
        else:
            result.summary_rows.extend(d.summary_rows)
            result.utterance_rows.extend(d.utterance_rows)
            if d.pngs:
                result.reports.append((d.item.name, d.pngs))
        bar.update(1)
        bar.set_postfix(failed=len(result.failed))

    with logging_redirect_tqdm(), bar:
        if workers <= 1 or len(inputs) <= 1:

            async def run_all() -> None:
                async with Analyzer(cfg) as analyzer:
                    for item in inputs:
                        done(await _analyze_and_write(analyzer, item, out_dir, report))

            asyncio.run(run_all())
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(
                max_workers=min(workers, len(inputs)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ProcessSession.start,
                initargs=(cfg.model_dump(mode="python"), logging.getLogger().getEffectiveLevel()),
            ) as pool:
                futures = [pool.submit(_ProcessSession.run, i, out_dir, report) for i in inputs]
                for fut in as_completed(futures):
                    done(fut.result())
    order = {i.name: n for n, i in enumerate(inputs)}
    result.summary_rows.sort(key=lambda r: order.get(r["name"], 0))
    result.utterance_rows.sort(key=lambda r: order.get(r["name"], 0))
    result.reports.sort(key=lambda r: order.get(r[0], 0))
    return result
