"""Utterances cut from the gate's verdicts on real speech: boundaries, truncation, minimum
length, bounded memory, and their results through StreamCore."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.core.events import EmotionUtterance, StreamStatus, validate_event
from streamer.core.gate import EnergyGate, frame_levels_dbfs
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore, UtteranceRequest, WindowRequest
from streamer.core.utterances import UtterancePolicy
from streamer.core.windower import Windower

SR = 16000
LABELS = ["neutral", "happy", "angry", "sad"]
EMODB = pathlib.Path(__file__).parents[2] / "data" / "emodb"
MODEL = {"name": "dropformer", "frontend": "logmel", "rev": "test"}
ANGRY = np.array([0.1, 0.1, 0.7, 0.1])
TOLERANCE = int(0.15 * SR)  # the gate's 30 ms frames, its hysteresis, the window grid


def speech(name: str) -> np.ndarray:
    x, sr = sf.read(EMODB / name, dtype="float32")
    assert sr == SR
    return np.asarray(x)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR), dtype=np.float32)


def speech_span(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the file's frames above the gate's threshold (-45 dBFS)."""
    loud = np.flatnonzero(frame_levels_dbfs(x, 480) >= -45)
    return int(loud[0]) * 480, min(x.size, (int(loud[-1]) + 1) * 480)


def make_core(
    gate: bool = True, window_s: float = 3.0, hop_s: float = 1.0, **policy: Any
) -> StreamCore:
    return StreamCore(
        "mic0",
        LABELS,
        windower=Windower(SR, window_s=window_s, hop_s=hop_s),
        gate=EnergyGate() if gate else None,
        smoother=Smoother(LABELS),
        model_info=MODEL,
        utterances=UtterancePolicy(**policy),
        quality=True,
    )


def feed(core: StreamCore, audio: np.ndarray, block: int = 1600) -> list[Any]:
    out: list[Any] = []
    peak = 0
    for i in range(0, audio.size, block):
        out.extend(core.push(audio[i : i + block]))
        assert core.cutter is not None
        peak = max(peak, core.cutter.buffered_samples)
    out.extend(core.flush())
    out.append(peak)
    return out


def utterances(items: list[Any]) -> list[UtteranceRequest]:
    return [x for x in items if isinstance(x, UtteranceRequest)]


@pytest.mark.parametrize(("window_s", "hop_s", "block"), [(3.0, 1.0, 1600), (1.0, 0.5, 320)])
def test_two_utterances_with_a_pause_between(window_s: float, hop_s: float, block: int) -> None:
    a, b = speech("03a01Fa.wav"), speech("16a02Tc.wav")
    audio = np.concatenate([silence(1.0), a, silence(1.0), b, silence(2.0)])
    starts = [SR, SR + a.size + SR]
    core = make_core(window_s=window_s, hop_s=hop_s)
    got = utterances(feed(core, audio, block))
    assert len(got) == 2
    for req, offset, x in zip(got, starts, (a, b), strict=True):
        lo, hi = speech_span(x)
        assert abs(req.start_sample - (offset + lo)) <= TOLERANCE
        assert abs(req.end_sample - (offset + hi)) <= TOLERANCE
        assert req.samples.size == req.end_sample - req.start_sample and not req.truncated
        np.testing.assert_array_equal(req.samples, audio[req.start_sample : req.end_sample])
    assert [r.seq for r in got] == [0, 1]


def test_the_last_utterance_comes_at_flush_and_results_become_events() -> None:
    a = speech("03a01Wa.wav")
    core = make_core()
    out = [x for x in feed(core, np.concatenate([silence(0.5), a])) if not isinstance(x, int)]
    (req,) = utterances(out)
    assert out.index(req) > max(i for i, x in enumerate(out) if isinstance(x, WindowRequest))
    assert core.pending_utterances == 1
    (event,) = core.on_utterance_result(req.seq, ANGRY, 120, 80, 12.5)
    assert isinstance(event, EmotionUtterance)
    d = event.to_dict()
    validate_event(d)
    assert d["label"] == "angry" and d["confidence"] == 0.7 and d["truncated"] is False
    assert d["audio_start_ms"] == req.start_sample * 1000 // SR
    assert d["arousal"] > 0 and d["valence"] < 0 and d["tokens"] == {"in": 120, "kept": 80}
    assert d["quality"]["telephone_band"] is False and d["quality"]["snr_db"] > 20
    assert core.on_utterance_result(req.seq, ANGRY, 1, 1, 1.0) == []  # a duplicate
    status = core.stop()
    assert status.counters["utterances"] == 1 and status.counters["late_results"] == 1
    validate_event(status.to_dict())


def test_long_speech_is_truncated_to_its_last_max_s_and_memory_stays_bounded() -> None:
    names = ["16a02Tc.wav", "03a01Fa.wav", "10a02Na.wav", "16a04Fa.wav", "03a01Wa.wav"]
    audio = np.concatenate([speech(n) for n in names] * 2)  # about 18 s, pauses under 0.5 s
    core = make_core(max_s=4.0, end_silence_s=0.5)
    items = feed(core, np.concatenate([audio, silence(1.5)]))
    peak = items[-1]
    got = utterances(items[:-1])
    assert got and all(r.samples.size <= 4 * SR for r in got)
    longest = max(got, key=lambda r: r.samples.size)
    assert longest.truncated and longest.samples.size == 4 * SR
    np.testing.assert_array_equal(
        longest.samples, audio[longest.end_sample - 4 * SR : longest.end_sample]
    )
    # the open utterance's audio: at most max_s + end_silence_s + one window's new audio
    assert peak <= (4.0 + 0.5 + 1.0) * SR


def test_without_a_gate_the_whole_stream_is_one_utterance() -> None:
    audio = np.concatenate([speech("03a01Fa.wav")] * 4)  # 7.6 s
    core = make_core(gate=False, max_s=5.0)
    items = feed(core, audio)
    (req,) = utterances(items[:-1])
    assert req.truncated and req.end_sample == audio.size and req.samples.size == 5 * SR
    assert items[-1] <= 6 * SR


def test_short_bursts_are_not_classified() -> None:
    a = speech("03a01Fa.wav")
    lo, _ = speech_span(a)
    burst = a[lo : lo + int(0.3 * SR)]
    core = make_core(min_s=0.5)
    items = feed(core, np.concatenate([silence(2.0), burst, silence(2.0), burst, silence(1.0)]))
    assert utterances(items[:-1]) == []
    assert core.cutter is not None and core.cutter.short == 2


def test_skipped_lost_and_bad_utterance_results_are_counted() -> None:
    a = speech("03a01Fa.wav")
    core = make_core()
    audio = np.concatenate([a, silence(1.0), a, silence(1.0), a, silence(1.0), a])
    items = feed(core, audio)[:-1]
    reqs = utterances(items)
    n_windows = sum(isinstance(x, WindowRequest) for x in items)  # never answered here
    assert len(reqs) == 4
    assert core.on_utterance_skipped(reqs[0].seq, "stale") == []
    assert core.on_utterance_skipped(reqs[1].seq, "error") == []
    (bad,) = core.on_utterance_result(reqs[2].seq, np.array([0.5, 0.5, 0.5, 0.5]), 1, 1, 1.0)
    assert isinstance(bad, StreamStatus) and "utterance 2" in (bad.detail or "")
    with pytest.raises(ValueError, match="no utterance with seq 9"):
        core.on_utterance_result(9, ANGRY, 1, 1, 1.0)
    final = core.stop()  # utterance 3 is still outstanding
    c = final.counters
    assert c["skipped_utterances"] == 1 and c["inference_errors"] == 1 and c["bad_results"] == 1
    assert c["lost_results"] == n_windows + 1 and c["utterances"] == 0
    validate_event(final.to_dict())


def test_utterances_carry_the_current_statistics_but_do_not_fold_in() -> None:
    from dropformer.normalization import Moments, StreamNormalizer, StreamNormConfig

    norm = StreamNormalizer(
        np.zeros(3), np.ones(3), StreamNormConfig(kind="stream", prior_s=1.0, time_constant_s=1e3)
    )
    core = StreamCore(
        "mic0",
        LABELS,
        windower=Windower(SR, window_s=1.0, hop_s=0.5),
        gate=EnergyGate(),
        smoother=Smoother(LABELS),
        model_info=MODEL,
        normalizer=norm,
        utterances=UtterancePolicy(),
    )
    a = speech("03a01Fa.wav")
    items = feed(core, np.concatenate([a, silence(1.0)]))[:-1]
    block = Moments(50.0, np.full(3, 2.0), np.full(3, 5.0))
    windows = [x for x in items if isinstance(x, WindowRequest)]
    (utt,) = utterances(items)
    np.testing.assert_allclose(utt.norm[0] if utt.norm else None, 0.0)  # nothing folded yet
    for w in windows:
        core.on_result(w.seq, ANGRY, 50, 40, 5.0, moments=block)
    frames = norm.frames
    assert frames > 0
    core.on_utterance_result(utt.seq, ANGRY, 50, 40, 5.0)
    assert norm.frames == frames  # the utterance's audio was counted by its windows already
    later = utterances(feed(make_core(), a)[:-1])
    assert later[0].norm is None  # a core without a normaliser sends none


def test_the_energy_gate_reports_the_frames_it_judged() -> None:
    x = np.concatenate([silence(1.0), speech("03a01Fa.wav"), silence(0.1)])
    d = EnergyGate().decide(x)
    assert d.frame_speech is not None and d.frame_samples == 480
    assert d.frame_speech.size == -(-x.size // 480)
    assert d.speech_share == pytest.approx(float(d.frame_speech.mean()))
    assert not d.frame_speech[: SR // 480].any() and d.frame_speech[SR // 480 + 10]
