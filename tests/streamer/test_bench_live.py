"""The WavLM live benchmark's machinery (streamer/bench_live.py) on a tiny WavLM, through the real daemon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer import bench_live

EMODB = Path(__file__).resolve().parents[1] / "data" / "emodb"


@pytest.fixture(scope="module")
def wavlm_checkpoint(tiny_wavlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dropformer import DropFormer, FrontendConfig, preset, save_checkpoint

    torch.manual_seed(0)
    model = DropFormer(
        preset("dropformer", input_dim=32, d_model=32, num_heads=4, ffn_dim=64, head_hidden=(32,))
    )
    return save_checkpoint(
        tmp_path_factory.mktemp("wavlm-ckpt"),
        model.eval(),
        frontend_config=FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=2),
        labels=bench_live.LABELS,
        meta={"note": "tests only"},
    )


def test_engine_applies_front_end_overrides_and_warms_up(
    wavlm_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.engine import Engine

    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))

    exact = Engine.load(str(wavlm_checkpoint), device="cpu")
    fast = Engine.load(
        str(wavlm_checkpoint), device="cpu", frontend_overrides={"dtype": "bfloat16"}
    )
    assert next(fast.frontend.parameters()).dtype == torch.bfloat16
    assert fast.warm_up(16000, batch_sizes=(1, 2)) > 0
    wave = bench_live.speech(sorted(EMODB.glob("*.wav")), 3.0)
    a, b = exact.run([wave]).probs, fast.run([wave]).probs
    assert np.abs(a - b).max() < 0.05


def test_engine_compiles_the_front_end_at_warm_up_with_the_same_answers(
    wavlm_checkpoint: Path,
) -> None:
    """frontend.compile through the engine: the start-up warm-up compiles for the window length, and
    live windows of real speech (alone and batched) get the eager engine's probabilities."""
    from streamer.engine import Engine

    exact = Engine.load(str(wavlm_checkpoint), device="cpu")
    fast = Engine.load(str(wavlm_checkpoint), device="cpu", frontend_overrides={"compile": True})
    assert fast.frontend.compiled_samples is None
    fast.warm_up(16000, batch_sizes=(1, 2))
    assert fast.frontend.compiled_samples == 16000
    windows = [
        w[:16000]
        for w in bench_live.windows_of(bench_live.speech(sorted(EMODB.glob("*.wav")), 6.0), 3)
    ]
    a, b = exact.run(windows).probs, fast.run(windows).probs
    assert np.abs(a - b).max() < 1e-5
    assert np.abs(exact.run(windows[:1]).probs - fast.run(windows[:1]).probs).max() < 1e-5


def test_naive_engine_equals_the_exact_monitor_path(
    wavlm_checkpoint: Path, tiny_wavlm_dir: Path
) -> None:
    """The HF user's code (full model, hidden_states[layer]) and the monitor's exact path give the same answer."""
    from streamer.engine import Engine

    naive = bench_live.NaiveEngine(wavlm_checkpoint, tiny_wavlm_dir, layer=2)
    exact = Engine.load(str(wavlm_checkpoint), device="cpu")
    windows = bench_live.windows_of(bench_live.speech(sorted(EMODB.glob("*.wav")), 6.0), 3)
    agree = bench_live.agreement(
        bench_live.classify(exact, windows, "exact"), bench_live.classify(naive, windows, "naive")
    )
    assert agree["label_agreement"] == 1.0 and agree["max_prob_diff"] < 1e-4


@pytest.mark.parametrize("mode", ["naive", "monitor"])
def test_daemon_run_reports_latency_skips_and_rss(
    mode: str,
    wavlm_checkpoint: Path,
    tiny_wavlm_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import soundfile as sf

    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path / "cache"))  # the daemon inherits it

    streams = []
    for i in range(2):
        path = tmp_path / f"s{i}.wav"
        sf.write(str(path), bench_live.speech(sorted(EMODB.glob("*.wav")), 8.0, start=i), 16000)
        streams.append(str(path))
    spec = {
        "mode": mode,
        "checkpoint": str(wavlm_checkpoint),
        "wavlm": str(tiny_wavlm_dir),
        "layer": 2,
        "device": "cpu",
        "threads": 1,
        "frontend": {},
        "max_batch": 4,
        "streams": streams,
        "duration_s": 7.0,
        "settle_s": 3.5,
    }
    run = bench_live.run_daemon(spec, timeout_s=300)
    assert run["streams"] == 2 and run["estimates"] >= 2
    assert 0 < run["p50_ms"] <= run["p99_ms"] < 5000
    # a loaded machine may let a window go stale: it is counted, and most are classified
    assert run["windows"] >= run["estimates"] and 0 <= run["skipped_stale"] <= run["windows"] // 2
    assert run["peak_rss_mb"] > 100
    assert bench_live.holds(run, 5000.0) == (run["skipped_stale"] == 0)
    assert not bench_live.holds({**run, "skipped_stale": 1}, 5000.0)


def test_batching_knee_is_where_doubling_stops_paying() -> None:
    assert bench_live.batching_knee({1: 10.0, 2: 6.0, 4: 4.0, 8: 3.9, 16: 3.8}) == 4
    assert bench_live.batching_knee({1: 10.0, 2: 5.0}) == 2


def test_markdown_renders_every_table() -> None:
    run = {
        "streams": 1,
        "estimates": 30,
        "p50_ms": 300.0,
        "p99_ms": 900.0,
        "max_ms": 950.0,
        "skipped_stale": 0,
        "skipped_silence": 2,
        "peak_rss_mb": 900.0,
        "holds": True,
    }
    result = {
        "device": "cpu",
        "threads": 2,
        "head": bench_live.HEAD,
        "train_files": 40,
        "p99_limit_ms": 1500.0,
        "per_window": [
            {
                "what": "naive",
                "threads": 2,
                "frontend_ms": 900.0,
                "head_ms": 5.0,
                "window_ms": 910.0,
            },
            {
                "what": "fast",
                "threads": 2,
                "frontend_ms": 300.0,
                "head_ms": 5.0,
                "window_ms": 310.0,
                "label_agreement": 1.0,
                "max_prob_diff": 0.004,
                "batching": {1: 310.0, 2: 250.0},
            },
        ],
        "exact_label_spread": {"neutral": 3},
        "chosen_frontend": {"dtype": "bfloat16"},
        "naive_runs": [{**run, "holds": False, "skipped_stale": 9}],
        "monitor_runs": [run],
        "naive_capacity": 0,
        "monitor_capacity": 1,
        "naive_throughput_streams": 1.1,
    }
    text = bench_live.markdown(result)
    assert "| monitor | 1 | 30 | 300 | 900 |" in text and "| naive | 1 |" in text
    assert "100.0%" in text and "knee" in text
