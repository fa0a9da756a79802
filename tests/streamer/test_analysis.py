"""``emotion-monitor analyze``: the tables and summaries from events, the inputs it accepts,
and the whole command on real EmoDB speech through the real daemon (stereo calls, bad
files, reports, parity with a live daemon run)."""

from __future__ import annotations

import csv
import html.parser
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from dropformer.configio import validate
from dropformer.errors import DataError
from streamer.analysis import (
    AnalysisInput,
    Analyzer,
    find_inputs,
    summarize,
    utterance_rows,
)
from streamer.cli import main as cli
from streamer.config import DaemonConfig
from streamer.core.events import (
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Quality,
    StreamStatus,
    validate_event,
)
from streamer.replay import daemon_config, read_estimates, run_daemon_on

EMODB = Path(__file__).resolve().parents[1] / "data" / "emodb"
LABELS = ["neutral", "happy", "angry", "sad"]
MODEL = {"name": "dropformer", "frontend": "logmel80", "rev": "test"}


def estimate(
    seq: int, start_ms: int, end_ms: int, label: str, *, speech: bool = True, **kw: Any
) -> EmotionEstimate:
    scores = {c: (0.7 if c == label else 0.1) for c in LABELS}
    return EmotionEstimate(
        "s", seq, start_ms, end_ms, speech, label, 0.7, scores, scores,
        kw.get("arousal", 0.0), kw.get("valence", 0.0), 10, 8, 1.0, MODEL,
        quality=kw.get("quality"),
    )  # fmt: skip


def test_summary_from_estimates_transitions_and_quality() -> None:
    clean = Quality(-20.0, 0.0, 30.0, 7000.0, False)
    phone = Quality(-25.0, 0.01, 5.0, 3400.0, True)
    events = [
        StreamStatus("s", "online", 0),
        estimate(0, 0, 3000, "angry", arousal=0.8, valence=-0.6, quality=clean),  # 3 s angry
        EmotionTransition("s", 0, 3000, None, "angry", 0.7),  # the first label: not a change
        estimate(1, 1000, 4000, "angry", arousal=0.8, valence=-0.6, quality=clean),  # +1 s
        estimate(2, 2000, 5000, "angry", speech=False, quality=phone),  # silence: not counted
        estimate(3, 3000, 6000, "sad", arousal=-0.4, valence=-0.6, quality=phone),  # +1 s sad
        EmotionTransition("s", 3, 6000, "angry", "sad", 0.7),
        estimate(4, 4000, 7000, "sad", arousal=-0.4, valence=-0.6, quality=phone),  # +1 s sad
        StreamStatus("s", "offline", 7500, {"windows": 5}),
    ]
    s = summarize(events, LABELS)
    assert s["stream_id"] == "s" and s["duration_s"] == 7.5
    assert s["speech_s"] == 6.0  # 3 + 1 (angry) + 1 + 1 (sad); the silent hop is left out
    assert s["label_share"] == {"neutral": 0.0, "happy": 0.0, "angry": 0.6667, "sad": 0.3333}
    assert s["dominant_label"] == "angry"
    assert s["longest_episode_s"] == {"neutral": 0.0, "happy": 0.0, "angry": 4.0, "sad": 2.0}
    assert s["transitions"] == 1
    assert s["transition_list"] == [
        {"audio_s": 6.0, "from": "angry", "to": "sad", "confidence": 0.7}
    ]
    assert s["arousal_mean"] == pytest.approx((0.8 * 4 - 0.4 * 2) / 6, abs=1e-4)
    assert s["valence_mean"] == pytest.approx(-0.6, abs=1e-4)
    assert s["quality"] == {
        "windows": 5,
        "clipped_share": 0.6,
        "low_snr_share": 0.6,
        "telephone_band_share": 0.6,
        "level_dbfs_mean": -23.0,
    }
    assert s["utterances"] == 0 and s["counters"] == {"windows": 5}


def test_utterance_rows_and_their_absence() -> None:
    q = Quality(-18.0, 0.0, 25.0, 7600.0, False)
    utt = EmotionUtterance(
        "s", 0, 500, 2300, "angry", 0.8, {"neutral": 0.1, "happy": 0.05, "angry": 0.8, "sad": 0.05},
        0.7, -0.5, 90, 60, 12.0, MODEL, truncated=True, quality=q,
    )  # fmt: skip
    rows = utterance_rows([estimate(0, 0, 3000, "angry"), utt], channel="customer")
    assert rows == [
        {
            "stream_id": "s", "channel": "customer", "seq": 0, "start_s": 0.5, "end_s": 2.3,
            "duration_s": pytest.approx(1.8), "label": "angry", "confidence": 0.8,
            "scores": utt.scores, "arousal": 0.7, "valence": -0.5, "truncated": True,
            "quality": q.to_dict(),
        }
    ]  # fmt: skip
    assert summarize([utt], LABELS)["utterances"] == 1
    # A daemon without utterance events: an empty table; the summary still comes from estimates.
    assert utterance_rows([estimate(0, 0, 3000, "sad")]) == []
    assert summarize([estimate(0, 0, 3000, "sad")], LABELS)["dominant_label"] == "sad"
    assert summarize([], LABELS)["dominant_label"] is None


def test_inputs_folders_and_manifests(tmp_path: Path) -> None:
    (tmp_path / "calls" / "a").mkdir(parents=True)
    for name in ("a/x.wav", "y.flac", "notes.txt"):
        (tmp_path / "calls" / name).write_bytes(b"")
    inputs, many = find_inputs(tmp_path / "calls")
    assert many and [(i.path.name, i.name) for i in inputs] == [("x.wav", "a__x"), ("y.flac", "y")]
    # the training manifests' format (path,label,speaker), relative paths, extra columns kept
    (tmp_path / "m.csv").write_text(
        "path,label,speaker\ncalls/a/x.wav,angry,03\nmissing.wav,sad,08\n"
    )
    inputs, many = find_inputs(tmp_path / "m.csv")
    assert many and inputs[0].path == tmp_path / "calls/a/x.wav"
    assert inputs[0].extra == {"label": "angry", "speaker": "03"} and inputs[1].name == "missing"
    (tmp_path / "m.jsonl").write_text('{"path": "calls/y.flac", "speaker": 3}\n')
    inputs, _ = find_inputs(tmp_path / "m.jsonl")
    assert inputs == [AnalysisInput(tmp_path / "calls/y.flac", "calls__y", {"speaker": "3"})]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no audio files .* pass a folder of recordings"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match=r"'nowhere.wav' does not exist; pass an audio file"):
        find_inputs("nowhere.wav")
    (tmp_path / "bad.csv").write_text("file,label\na.wav,sad\n")
    with pytest.raises(DataError, match=r"has no 'path' column"):
        find_inputs(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"file": "a.wav"}\n')
    with pytest.raises(DataError, match=r'line 1 has no "path" string'):
        find_inputs(tmp_path / "bad.jsonl")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)


def test_folder_with_a_bad_file_reports_and_draws(tmp_path: Path, tiny_checkpoint: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in ("03a01Wa.wav", "16a02Tc.wav"):
        (folder / name).write_bytes((EMODB / name).read_bytes())
    (folder / "broken.wav").write_text("not audio at all")
    out = tmp_path / "out"
    status = cli(["analyze", str(folder), "--out", str(out), "--report", "--workers", "2",
                  "--set", f"model.checkpoint={tiny_checkpoint}", "--set", "gate.kind=none"])  # fmt: skip
    assert status == 1  # one recording failed; the others were analysed
    rows = read_csv(out / "summary.csv")
    assert [r["name"] for r in rows] == ["03a01Wa", "16a02Tc", "broken"]
    assert "broken.wav' cannot be decoded" in rows[2]["error"] and not rows[0]["error"]
    for r in rows[:2]:
        assert float(r["speech_s"]) > 1.0 and r["dominant_label"] in LABELS
        assert sum(float(r[f"share_{c}"]) for c in LABELS) == pytest.approx(1.0, abs=1e-3)
        folder_out = out / r["name"]
        lines = (folder_out / "timeline.jsonl").read_text().splitlines()
        assert any('"emotion.estimate"' in line for line in lines)
        for line in lines:
            validate_event(json.loads(line))  # the daemon's own events, schema-valid
        summary = json.loads((folder_out / "summary.json").read_text())
        assert summary["labels"] == LABELS and summary["streams"][0]["stream_id"] == r["name"]
        # gate off: the whole recording is one utterance, the model run once on all of it
        [utt] = read_csv(folder_out / "utterances.csv")
        assert float(utt["start_s"]) == 0.0 and utt["label"] in LABELS
        assert float(utt["end_s"]) == pytest.approx(float(r["duration_s"]), abs=0.05)
        assert len(json.loads((folder_out / "utterances.json").read_text())) == 1

        import matplotlib.image

        png = matplotlib.image.imread(folder_out / "report.png")
        assert png.shape[:2] == (520, 1000)
        scores_area = png[150:350, 100:850, :3].reshape(-1, 3)  # the stacked scores
        colours = {tuple(np.round(p, 2)) for p in scores_area[::7]}
        assert len(colours) >= 4  # several labels' colours, not a blank plot
    parser = Links()
    parser.feed((out / "index.html").read_text())
    assert "03a01Wa/report.png" in parser.links and "03a01Wa/summary.json" in parser.links
    assert "16a02Tc/report.png" in parser.links and "summary.csv" in parser.links
    assert all((out / link).is_file() for link in parser.links)


def stereo_call(tmp_path: Path, left: str, right: str) -> tuple[Path, Path, Path]:
    """A stereo WAV of two EmoDB recordings (one per channel, cut to the shorter) and each alone."""
    a, _ = sf.read(EMODB / left, dtype="int16")
    b, _ = sf.read(EMODB / right, dtype="int16")
    n = min(a.size, b.size)
    paths = tmp_path / "call.wav", tmp_path / "left.wav", tmp_path / "right.wav"
    sf.write(paths[0], np.stack([a[:n], b[:n]], axis=1), 16000, subtype="PCM_16")
    sf.write(paths[1], a[:n], 16000, subtype="PCM_16")
    sf.write(paths[2], b[:n], 16000, subtype="PCM_16")
    return paths


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Estimates without what may differ between runs (latency) or names the stream."""
    keep = [e for e in events if e["type"] == "emotion.estimate"]
    return [{k: v for k, v in e.items() if k not in ("latency_ms", "stream_id")} for e in keep]


def analyzer_config(checkpoint: Path, **analyze: Any) -> DaemonConfig:
    raw = {"model": {"checkpoint": str(checkpoint)}, "analyze": analyze,
           "windowing": {"hop_s": 0.5, "window_s": 1.0}}  # fmt: skip
    return validate(DaemonConfig, raw)


async def test_separate_channels_equal_each_channel_alone(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    call, left, right = stereo_call(tmp_path, "03a01Wa.wav", "16a02Tc.wav")
    cfg = analyzer_config(tiny_checkpoint, channels="separate", channel_names=["agent", "customer"])
    async with Analyzer(cfg) as a:  # the lawful default: the agent's voice is not analysed
        assert [s.stream_id for s in (await a.analyze(AnalysisInput(call, "call"))).streams] == [
            "call.customer"
        ]
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"analyse_agent": True})})
    async with Analyzer(cfg) as a:
        both = await a.analyze(AnalysisInput(call, "call"))
    async with Analyzer(analyzer_config(tiny_checkpoint)) as a:
        alone = [await a.analyze(AnalysisInput(p, p.stem)) for p in (left, right)]
    assert [s.stream_id for s in both.streams] == ["call.agent", "call.customer"]
    assert [s.channel for s in both.streams] == ["agent", "customer"]
    for stream, single in zip(both.streams, alone):
        mine = [e for e in both.events if e.get("stream_id") == stream.stream_id]
        assert comparable(mine) == comparable(single.events) and comparable(mine)
        assert stream.summary["label_share"] == single.streams[0].summary["label_share"]
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.zeros(16000, dtype=np.int16), 16000)
    with pytest.raises(
        Exception, match=r"has 1 channel, so there is nothing to separate; use --channels mix"
    ):
        async with Analyzer(cfg) as a:
            await a.analyze(AnalysisInput(mono, "mono"))


def test_analyze_gives_the_live_daemons_estimates(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = tmp_path / "three.wav"  # about 6 s of speech
    parts = [
        sf.read(EMODB / n, dtype="int16")[0] for n in ("03a01Wa.wav", "16a02Tc.wav", "10a02Fa.wav")
    ]
    sf.write(wav, np.concatenate(parts), 16000, subtype="PCM_16")
    events = tmp_path / "live.jsonl"
    # The daemon as it normally runs (run_daemon, JSONL publisher), the file not paced.
    run_daemon_on(daemon_config(tiny_checkpoint, wav, events, stream_id="live"))
    live = read_estimates(events)
    out = tmp_path / "out"
    assert cli(["analyze", str(wav), "--out", str(out), "--set", f"model.checkpoint={tiny_checkpoint}"]) == 0  # fmt: skip
    timeline = [json.loads(x) for x in (out / "three" / "timeline.jsonl").read_text().splitlines()]
    assert len(live) >= 2 and comparable(timeline) == comparable(live)


def test_utterance_rows_for_real_speech(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "out"
    assert cli(["analyze", str(EMODB / "03a01Wa.wav"), "--out", str(out), "--set", f"model.checkpoint={tiny_checkpoint}"]) == 0  # fmt: skip
    rows = read_csv(out / "03a01Wa" / "utterances.csv")
    assert len(rows) == 1  # one sentence: one utterance, within the file
    duration_s = sf.info(str(EMODB / "03a01Wa.wav")).duration
    assert (
        0.0 <= float(rows[0]["start_s"]) < 0.5
        and duration_s - 0.5 < float(rows[0]["end_s"]) <= duration_s + 0.05
    )
    assert {f"score_{c}" for c in LABELS} <= set(rows[0]) and rows[0]["label"] in LABELS
    assert sum(float(rows[0][f"score_{c}"]) for c in LABELS) == pytest.approx(1.0, abs=1e-3)


def test_missing_target_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert cli(["analyze", str(tmp_path / "nope.wav")]) == 2
    assert "nope.wav' does not exist; pass an audio file" in caplog.text


def test_report_draws_utterances_in_their_labels_colours(tmp_path: Path) -> None:
    from matplotlib.colors import to_rgb

    from streamer.analysis import FileAnalysis, StreamResult
    from streamer.report import draw_reports, label_colour

    wav = EMODB / "03a01Wa.wav"
    utt = EmotionUtterance(
        "s", 0, 200, 1700, "angry", 0.8, {c: 0.8 if c == "angry" else 0.05 for c in LABELS},
        0.7, -0.5, 90, 60, 12.0, MODEL,
    )  # fmt: skip
    parsed = [
        StreamStatus("s", "online", 0),
        estimate(0, 0, 1000, "sad"),
        estimate(1, 0, 1870, "angry"),
        EmotionTransition("s", 1, 1870, "sad", "angry", 0.7),
        utt,
        StreamStatus("s", "offline", 1877),
    ]
    events = [e.to_dict() for e in parsed]
    summary = summarize(parsed, LABELS)
    fa = FileAnalysis(
        AnalysisInput(wav, "x"), LABELS, MODEL, [], events,
        [StreamResult("s", None, summary, utterance_rows(parsed))], 1.877, 1, 16000,
    )  # fmt: skip
    (png_path,) = draw_reports(fa, tmp_path)
    import matplotlib.image

    png = matplotlib.image.imread(png_path)[..., :3]
    strip = png[430:470, 200:700].reshape(-1, 3)  # the utterance lane
    angry = np.array(to_rgb(label_colour("angry")))
    assert (np.abs(strip - angry).max(axis=1) < 0.02).mean() > 0.3
    assert label_colour("angry") != label_colour("sad") == label_colour("sad")
    assert label_colour("zorn") == label_colour("zorn")  # any label set: stable colours
