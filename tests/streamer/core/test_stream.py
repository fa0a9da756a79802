"""StreamCore: sanitising, gating, status on change, seq order, reordering of results."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from dropformer.errors import AudioError, ConfigError
from streamer.core.events import EmotionEstimate, EmotionTransition, StreamStatus, validate_event
from streamer.core.gate import EnergyGate
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore, WindowRequest
from streamer.core.windower import Windower

SR = 16000
LABELS = ["neutral", "happy", "angry", "sad"]
EMODB = pathlib.Path(__file__).parents[2] / "data" / "emodb"
MODEL = {"name": "dropformer", "frontend": "logmel", "rev": "test", "random_init": True}
ANGRY = np.array([0.1, 0.1, 0.7, 0.1])
SAD = np.array([0.1, 0.05, 0.05, 0.8])


def make_core(gate: bool = True, **kwargs: Any) -> StreamCore:
    smoother_kwargs = kwargs.pop("smoother", {})
    return StreamCore(
        "mic0",
        LABELS,
        windower=Windower(SR, window_s=1.0, hop_s=0.5),
        gate=EnergyGate() if gate else None,
        smoother=Smoother(LABELS, time_constant_s=0.5, min_dwell_s=0.5, **smoother_kwargs),
        model_info=MODEL,
        **kwargs,
    )


def speech(name: str) -> np.ndarray:
    x, sr = sf.read(EMODB / name, dtype="float32")
    assert sr == SR
    return x


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def push_frames(core: StreamCore, audio: np.ndarray, frame: int = 320) -> list[Any]:
    out: list[Any] = []
    for i in range(0, audio.size, frame):
        out.extend(core.push(audio[i : i + frame]))
    return out


def requests(items: list[Any]) -> list[WindowRequest]:
    return [x for x in items if isinstance(x, WindowRequest)]


def of_type(items: list[Any], cls: type) -> list[Any]:
    return [x for x in items if isinstance(x, cls)]


def answer(core: StreamCore, reqs: list[WindowRequest], probs: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for r in reqs:
        out.extend(core.on_result(r.seq, probs, tokens_in=50, tokens_kept=30, latency_ms=12.5))
    return out


def test_real_speech_between_silences() -> None:
    core = make_core()
    audio = np.concatenate(
        [silence(2), speech("03a01Wa.wav"), silence(3), speech("03a02Ta.wav"), silence(2)]
    )
    events: list[Any] = [core.start()]
    for i in range(0, audio.size, 320):
        out = core.push(audio[i : i + 320])
        events.extend(out)
        # Answer at once, like a fast worker: angry for the first utterance, sad later.
        probs = ANGRY if i < 4 * SR else SAD
        events.extend(answer(core, requests(out), probs))
    events.extend(core.flush())
    events.append(core.stop())
    n_windows = core.counters["windows"]

    states = [e.state for e in of_type(events, StreamStatus)]
    assert states == ["online", "silence", "speech", "silence", "speech", "silence", "offline"]
    reqs = requests(events)
    c = core.counters
    assert c["windows"] == n_windows == len(reqs) + c["skipped_silence"]
    assert c["inferred"] == len(reqs) and c["bad_samples"] == 0
    # Speech windows overlap the utterances: 2.0-3.9 s and 6.9-8.6 s.
    for r in reqs:
        mid_s = (r.start_sample + r.end_sample) / 2 / SR
        assert 1.5 <= mid_s <= 4.4 or 6.4 <= mid_s <= 9.1, mid_s
    estimates = of_type(events, EmotionEstimate)
    assert [e.seq for e in estimates] == sorted({e.seq for e in estimates})
    assert any(not e.speech and e.raw == {} for e in estimates)  # holding through the pause
    transitions = of_type(events, EmotionTransition)
    assert [(t.from_label, t.to_label) for t in transitions] == [(None, "angry"), ("angry", "sad")]
    assert estimates[-1].label == "sad" and estimates[-1].arousal < 0
    for e in events:
        if not isinstance(e, WindowRequest):
            validate_event(e.to_dict())
    final = events[-1]
    assert final.state == "offline" and final.counters["windows"] == n_windows


def test_nan_samples_counted_reported_once_and_not_propagated() -> None:
    core = make_core(gate=False)
    core.start()
    noisy = speech("03a01Nc.wav")
    noisy[100:110] = np.nan
    noisy[5000] = np.inf
    out = core.push(noisy)
    details = [e.detail for e in of_type(out, StreamStatus) if e.detail]
    assert len(details) == 1 and "11 non-finite" in details[0]
    assert core.counters["bad_samples"] == 11
    more = silence(0.5)
    more[3] = -np.inf
    out2 = core.push(more)
    assert not [e for e in of_type(out2, StreamStatus) if e.detail]
    assert core.counters["bad_samples"] == 12
    for r in requests(out + out2):
        assert np.all(np.isfinite(r.samples)) and r.samples.dtype == np.float32
    assert requests(out)[0].samples[100] == 0.0


def test_dtype_conversion_clipping_and_bad_shapes() -> None:
    core = make_core(gate=False)
    pcm = np.ones(SR, dtype=np.int16) * 16384
    r = requests(core.push(pcm))[0]
    assert r.samples.dtype == np.float32 and r.samples[0] == pytest.approx(0.5)
    loud = np.full(SR // 2, 1.5, dtype=np.float64)
    r2 = requests(core.push(loud))[0]
    assert r2.samples.max() == 1.0 and core.counters["clipped_samples"] == SR // 2
    with pytest.raises(AudioError, match="1-D mono"):
        core.push(np.zeros((320, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="dtype"):
        core.push(np.array(["a", "b"]))


def test_seq_is_monotonic_across_pushes() -> None:
    core = make_core(gate=False)
    rng = np.random.default_rng(3)
    audio = speech("03a01Fa.wav")
    items: list[Any] = []
    pos = 0
    while pos < audio.size:
        n = int(rng.integers(0, 3000))
        items.extend(core.push(audio[pos : pos + n]))
        pos += n
    items.extend(core.flush())
    seqs = [r.seq for r in requests(items)]
    assert seqs == list(range(len(seqs))) and len(seqs) == core.counters["windows"]
    ends = [r.end_sample for r in requests(items)]
    assert ends == sorted(ends)


def test_out_of_order_results_are_applied_in_order() -> None:
    core = make_core(gate=False)
    reqs = requests(core.push(speech("03a01Wa.wav")) + core.flush())
    assert [r.seq for r in reqs] == [0, 1, 2]
    assert core.on_result(2, ANGRY, 10, 5, 1.0) == []  # waits for 0 and 1
    first = core.on_result(0, ANGRY, 10, 5, 1.0)
    assert [e.seq for e in of_type(first, EmotionEstimate)] == [0]
    rest = core.on_result(1, SAD, 10, 5, 1.0)
    assert [e.seq for e in of_type(rest, EmotionEstimate)] == [1, 2]
    assert core.pending == 0
    assert core.on_result(1, SAD, 10, 5, 1.0) == []  # duplicate
    assert core.counters["late_results"] == 1 and core.counters["inferred"] == 3
    with pytest.raises(ValueError, match="seq 99"):
        core.on_result(99, SAD, 10, 5, 1.0)


def test_skipped_windows_are_counted_and_release_later_ones() -> None:
    core = make_core()
    reqs = requests(core.push(np.concatenate([speech("03a01Wa.wav"), silence(2)])))
    assert len(reqs) >= 2
    for r in reqs[1:]:
        core.on_result(r.seq, ANGRY, 10, 5, 1.0)
    out = core.on_skipped(reqs[0].seq)  # stale: the worker dropped it
    estimates = of_type(out, EmotionEstimate)
    assert estimates[0].seq == reqs[1].seq
    assert core.counters["skipped_stale"] == 1
    assert core.counters["inferred"] == len(reqs) - 1
    core.on_skipped(reqs[0].seq)
    assert core.counters["late_results"] == 1


def test_unanswered_requests_do_not_stall_the_stream() -> None:
    core = make_core(gate=False, max_pending=4)
    reqs = requests(push_frames(core, np.tile(speech("03a01Nc.wav"), 4)))
    assert len(reqs) > 8
    assert core.pending <= 4
    assert core.counters["lost_results"] == len(reqs) - 4
    out = core.on_result(reqs[-1].seq, ANGRY, 10, 5, 1.0)
    assert of_type(out, EmotionEstimate) == []  # still waiting for the three before it
    assert core.counters["late_results"] == 0
    core.on_result(reqs[0].seq, ANGRY, 10, 5, 1.0)
    assert core.counters["late_results"] == 1


def test_bad_model_output_is_reported_not_applied() -> None:
    core = make_core(gate=False)
    core.start()
    reqs = requests(core.push(speech("03a01Wa.wav")))
    out = core.on_result(reqs[0].seq, np.array([3.0, 1.0, 0.0, 0.0]), 10, 5, 1.0)
    (status,) = of_type(out, StreamStatus)
    assert "logits" in (status.detail or "")
    assert core.counters["bad_results"] == 1 and core.counters["inferred"] == 0
    out = core.on_result(reqs[1].seq, ANGRY, 10, 5, 1.0)
    assert [e.seq for e in of_type(out, EmotionEstimate)] == [reqs[1].seq]
    core.push(silence(0.5))
    again = core.on_result(2, np.array([np.nan, 1.0, 0.0, 0.0]), 10, 5, 1.0)
    assert of_type(again, StreamStatus) == [] and core.counters["bad_results"] == 2


def test_stop_with_error_and_lifecycle() -> None:
    core = make_core()
    assert core.start().state == "online"
    with pytest.raises(RuntimeError):
        core.start()
    reqs = requests(core.push(speech("03a01Wa.wav")))
    status = core.stop(error="sound device vanished")
    assert status.state == "error" and status.detail == "sound device vanished"
    assert status.counters["lost_results"] == len(reqs) == 2
    validate_event(status.to_dict())
    with pytest.raises(RuntimeError, match="stopped"):
        core.push(silence(0.1))


def test_push_before_start_emits_online_first() -> None:
    out = make_core().push(silence(0.1))
    assert isinstance(out[0], StreamStatus) and out[0].state == "online"


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"stream_id": "a/b"}, "stream_id"),
        ({"model_info": {"name": "x"}}, "model_info"),
        ({"labels": ["a", "b"]}, "labels"),
        ({"sample_rate_hz": 8000}, "sample_rate_hz"),
    ],
)
def test_bad_construction_names_the_field(kwargs: dict, name: str) -> None:
    args: dict[str, Any] = {
        "stream_id": "mic0",
        "labels": LABELS,
        "model_info": MODEL,
        "sample_rate_hz": SR,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=name):
        StreamCore(
            args.pop("stream_id"),
            args.pop("labels"),
            windower=Windower(SR),
            gate=None,
            smoother=Smoother(LABELS),
            **args,
        )


def test_events_do_not_depend_on_frame_size() -> None:
    audio = np.concatenate([silence(1.5), speech("03a01Fa.wav"), silence(2)])

    def run(frame: int) -> tuple[list[Any], list[Any]]:
        core = make_core()
        out: list[Any] = []
        for i in range(0, audio.size, frame):
            items = core.push(audio[i : i + frame])
            out.extend(items)
            out.extend(answer(core, requests(items), ANGRY))
        # Statuses come at gate time, estimates when results arrive: compare each stream.
        statuses = [(e.state, e.audio_ms) for e in of_type(out, StreamStatus)]
        estimates = [
            (e.seq, e.speech, e.label, round(e.confidence, 6))
            for e in of_type(out, EmotionEstimate)
        ]
        return statuses, estimates

    small = run(320)
    assert small == run(4000) == run(audio.size)
    assert small[0][1:] == [("silence", 1000), ("speech", 2000), ("silence", 4500)]


def test_status_heartbeat_has_current_counters_and_keeps_state() -> None:
    core = make_core()
    core.start()
    with pytest.raises(RuntimeError):
        make_core().status()
    core.push(np.zeros(16000 * 4, dtype=np.float32))
    beat = core.status()
    assert beat.state == core.state and beat.counters["windows"] == core.counters["windows"] >= 1


def test_normaliser_statistics_travel_with_requests_and_fold_in_seq_order() -> None:
    """Each window is requested with the stream's statistics; results fold in only the audio they add."""
    from dropformer.normalization import Moments, StreamNormalizer, StreamNormConfig

    norm = StreamNormalizer(
        np.zeros(3),
        np.ones(3),
        StreamNormConfig(kind="stream", prior_s=1.0, time_constant_s=1000.0),
    )
    core = make_core(gate=False, normalizer=norm)
    reqs = requests(
        push_frames(core, speech("03a01Wa.wav")[: int(1.5 * SR)])
    )  # windows of 1 s, hop 0.5 s
    assert len(reqs) == 2 and all(r.norm is not None for r in reqs)
    np.testing.assert_allclose(reqs[0].norm[0], 0.0)  # the prior: nothing folded in yet
    block = Moments(50.0, np.full(3, 2.0), np.full(3, 5.0))  # 1 s of features at 50 Hz
    # the second result arrives first: nothing is folded until window 0 is applied (seq order)
    core.on_result(reqs[1].seq, ANGRY, 50, 40, 5.0, moments=block)
    assert norm.frames == 0
    core.on_result(reqs[0].seq, ANGRY, 50, 40, 5.0, moments=block)
    # window 0 adds its whole second, window 1 only the half second it does not share with window 0
    assert norm.frames == pytest.approx(50 + 25, rel=0.01)
    nxt = requests(core.push(speech("03a01Wa.wav")[int(1.5 * SR) : int(1.8 * SR)]))
    nxt += requests(core.push(silence(0.2)))
    assert len(nxt) == 1 and np.all(nxt[0].norm[0] > 1.0)  # pulled towards the stream's mean of 2
    # a skipped window folds nothing in
    core.on_skipped(nxt[0].seq)
    assert norm.frames == pytest.approx(75, rel=0.01)
