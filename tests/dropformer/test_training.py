"""Training on real EmoDB speech (the 12-file fixture): loss falls, checkpoints round-trip, CLI end to end, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import dropformer.training as training
from dropformer.checkpoint import load_checkpoint, save_checkpoint
from dropformer.data.emodb import read_emodb
from dropformer.features import extract_features
from dropformer.frontends import FrontendConfig
from dropformer.model import DropFormer
from streamer.cli import main as cli

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "emodb"
TINY_MODEL = {
    "d_model": 32,
    "num_heads": 2,
    "ffn_dim": 64,
    "head_hidden": [32],
    "dropout": 0.0,
    "head_dropout": 0.0,
}


def _config(tmp: Path, **train: Any) -> dict[str, Any]:
    lines = ["path,label,speaker"]
    for u in read_emodb(FIXTURE).utterances:
        lines.append(f"{u.path},{u.label},{u.speaker}")
    (tmp / "tiny.csv").write_text("\n".join(lines) + "\n")
    return {
        "data": {"corpus": "manifest", "manifest": str(tmp / "tiny.csv")},
        "frontend": {"kind": "logmel"},
        "model": {"preset": "dropformer", "overrides": TINY_MODEL},
        "train": {
            "epochs": 8,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_epochs": 1,
            "folds": [1],
            "val_count": 1,
            "selection": "val",
            "num_threads": 1,
            "progress": False,
            "gain_db": [-20, 0],
            "freq_masks": 1,
            **train,
        },
        "cache_dir": str(tmp / "cache"),
        "out_dir": str(tmp / "run"),
    }


def test_train_and_evaluate_cli_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    assert cli(["train", "--config", str(tmp_path / "train.yaml"), "--log-level", "WARNING"]) == 0
    fold = tmp_path / "run" / "fold01"  # fold 1 tests speaker 03, validates on speaker 10
    history = json.loads((fold / "history.json").read_text())
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"] - 0.1
    result = json.loads((fold / "result.json").read_text())
    assert result["name"] == "03" and result["n_test"] == 4 and result["n_val"] == 4
    assert sorted(Path(k).stem for k in result["predictions"]) == [
        "03a01Fa",
        "03a01Nc",
        "03a01Wa",
        "03a02Ta",
    ]
    assert not (fold / "state.pt").exists()  # finished folds drop their resume state
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary) == {"utterance", "window", "calibration"}
    assert (
        summary["calibration"]["held_out_folds"] == 1 and summary["calibration"]["temperature"] > 0
    )
    # evaluate reloads the selected checkpoint in a fresh model: same predictions as at the end of training.
    assert cli(["evaluate", "--run", str(tmp_path / "run"), "--log-level", "WARNING"]) == 0
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert ev["utterance"]["mean"]["ua"] == pytest.approx(summary["utterance"]["mean"]["ua"])
    assert ev["utterance"]["pooled"]["confusion"] == summary["utterance"]["pooled"]["confusion"]
    md = (tmp_path / "run" / "evaluation.md").read_text()
    assert "mean ± std" in md and "| true \\ predicted |" in md
    # A bad key is a clear error naming it, with exit status 2.
    assert cli(["train", "--config", str(tmp_path / "train.yaml"), "--set", "train.epochz=3"]) == 2


def test_checkpoint_round_trips_to_identical_logits(tmp_path: Path) -> None:
    fe = FrontendConfig(kind="logmel")
    utts = read_emodb(FIXTURE).utterances
    feats = extract_features(utts, fe, tmp_path / "cache", progress=False)
    labels = ["neutral", "happy", "angry", "sad"]
    torch.manual_seed(0)
    model = DropFormer(training.model_config(training.parse_config(_config(tmp_path)), 80, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = training.make_batch(
        [feats[u.uid] for u in utts], [labels.index(u.label) for u in utts], fe, torch.device("cpu")
    )
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(
            model(batch.features, batch.lengths).logits, batch.targets
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]  # it learns the 12 real utterances
    save_checkpoint(
        tmp_path / "ckpt", model, frontend_config=fe, labels=labels, meta={"test": True}
    )
    ckpt = load_checkpoint(tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        a = model(batch.features, batch.lengths).logits
        b = ckpt.model(batch.features, batch.lengths).logits
    assert torch.equal(a, b) and ckpt.labels == labels and ckpt.frontend_config == fe


def test_interrupted_fold_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = training.parse_config(_config(tmp_path, epochs=5))
    corpus, folds, feats = training.prepare(cfg)
    real = training.evaluate_items
    calls = {"n": 0}

    def interrupt_in_epoch_3(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during epoch 3
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_items", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        training.train_fold(cfg, folds[0], corpus, feats, Path(cfg.out_dir))
    state = torch.load(Path(cfg.out_dir) / "fold01" / "state.pt", weights_only=False)
    assert state["epoch"] == 2
    monkeypatch.setattr(training, "evaluate_items", real)
    result = training.train_fold(cfg, folds[0], corpus, feats, Path(cfg.out_dir))
    history = json.loads((Path(cfg.out_dir) / "fold01" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert np.isfinite(result["utterance"]["ua"])


#: Shipped models: front end, recipe, data, licence of the weights (None: exported before licences were recorded).
SHIPPED = {
    "emodb_logmel": ("logmel", "configs/train/emodb.yaml", None, None),
    "whisper_emodb_nemo": (
        "whisper",
        "configs/train/whisper.yaml",
        "emodb+nemo",
        "CC-BY-NC-SA-4.0",
    ),
    "whisper_emodb": ("whisper", "configs/train/whisper.yaml", "emodb", "MIT"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_keep_their_cards_promises_and_label_real_speech(
    name: str, tmp_path: Path
) -> None:
    """Each committed model loads with its card's facts and, through `evaluate --checkpoint`, labels the
    12 real fixture files. They are in every shipped model's training data (EmoDB): this guards the
    artifacts; held-out figures are in BENCHMARKS.md. Whisper comes from `emotion-monitor convert-whisper`.
    """
    from dropformer.pretrained import DEFAULT_NAME, bundled

    kind, recipe, trained_on, licence = SHIPPED[name]
    folder = bundled(name)
    assert DEFAULT_NAME == "whisper_emodb_nemo" and folder is not None
    assert (folder / "model.safetensors").stat().st_size < 5_000_000
    assert (folder / "README.md").is_file()
    ckpt = load_checkpoint(folder)
    assert ckpt.labels == ["neutral", "happy", "angry", "sad"] and ckpt.frontend_config.kind == kind
    assert ckpt.meta["command"].startswith(f"emotion-monitor train --config {recipe}")
    assert ckpt.meta.get("trained_on") == trained_on and ckpt.meta.get("licence") == licence
    if kind == "whisper":  # per-stream normalisation and a temperature fitted on held-out data
        assert ckpt.stream_norm is not None and ckpt.norm_prior is not None
        assert 0.3 < ckpt.temperature < 5
    cfg = _config(tmp_path)
    cfg["frontend"] = ckpt.frontend_config.to_dict()
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["evaluate", "--config", str(tmp_path / "eval.yaml"), "--checkpoint", str(folder),
            "--out", str(tmp_path / "ev"), "--log-level", "WARNING"]  # fmt: skip
    assert cli(argv) == 0
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["utterance"]["pooled"]["count"] == 12
    assert ev["utterance"]["mean"]["wa"] >= 10 / 12


def test_export_carries_the_data_and_licence_of_the_fold_it_ships(tmp_path: Path) -> None:
    """Leave one corpus out, then ship fold 2 (trained without nEMO): MIT, trained on EmoDB; fold 1 carries nEMO's."""
    from tests.dropformer.test_data_readers import _nemo_tree

    cfg = _config(
        tmp_path, epochs=2, selection="last", val_count=0, folds_scheme="corpus", folds=None
    )
    cfg["data"] = {
        "sources": [
            {"name": "emodb", "corpus": "emodb", "root": str(FIXTURE)},
            {"name": "nemo", "corpus": "nemo", "root": str(_nemo_tree(tmp_path / "nemo"))},
        ]
    }
    (tmp_path / "loco.yaml").write_text(yaml.safe_dump(cfg))
    base = ["train", "--config", str(tmp_path / "loco.yaml"), "--log-level", "WARNING"]
    assert (
        cli(
            [*base, "--export", str(tmp_path / "emodb_only"), "--export-fold", "2", "--export-fp16"]
        )
        == 0
    )
    shipped = load_checkpoint(tmp_path / "emodb_only")
    assert shipped.meta["test"] == "nemo" and shipped.meta["trained_on"] == "emodb"
    assert shipped.meta["licence"] == "MIT" and shipped.meta["data_licences"] == {
        "emodb": "CC0-1.0"
    }
    st = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        tmp_path / "emodb_only" / "model.safetensors"
    )
    assert all(v.dtype == torch.float16 for k, v in st.items() if not k.startswith("stream_norm."))
    # the finished run is not trained again; fold 1 (tested on EmoDB) was trained on nEMO and carries its licence
    assert cli([*base, "--export", str(tmp_path / "nemo_only"), "--export-fold", "1"]) == 0
    assert load_checkpoint(tmp_path / "nemo_only").meta["licence"] == "CC-BY-NC-SA-4.0"
    assert cli([*base, "--export", str(tmp_path / "none"), "--export-fold", "3"]) == 2
    assert not (tmp_path / "none").exists()


def test_ablate_and_sweep_cli(tmp_path: Path) -> None:
    cfg = _config(tmp_path, epochs=2, selection="last", val_count=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert (
        cli(
            [
                "ablate",
                "--config",
                str(tmp_path / "c.yaml"),
                "--presets",
                "dropformer,vanilla",
                "--out",
                str(tmp_path / "abl"),
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    table = (tmp_path / "abl" / "ablation.md").read_text().splitlines()
    assert table[2].startswith("| DropFormer |") and table[3].startswith("| Vanilla Transformer |")
    assert (
        cli(
            [
                "sweep",
                "--config",
                str(tmp_path / "c.yaml"),
                "--keep-rates",
                "0.1,0.3",
                "--drop-rates",
                "0.2",
                "--out",
                str(tmp_path / "sw"),
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    points = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(p["keep_rate"], p["drop_rate"]) for p in points] == [(0.1, 0.2), (0.3, 0.2)]
    saved = json.loads((tmp_path / "sw" / "kr0.3_dr0.2" / "config.json").read_text())
    assert saved["model"]["overrides"]["keep_rate"] == 0.3
    assert (tmp_path / "sw" / "figure5.png").read_bytes()[:4] == b"\x89PNG"
    assert cli(["ablate", "--config", str(tmp_path / "c.yaml"), "--presets", "nope"]) == 2


def test_stream_normalisation_trains_and_is_served_the_same_in_evaluate_and_the_daemon(
    tmp_path: Path,
) -> None:
    """train.feature_norm=stream: the checkpoint records it, `evaluate` replays it, and the streaming
    protocol (the daemon in-process) and `emotion-monitor run` on the same audio publish identical estimates."""
    import subprocess
    import sys

    cfg = _config(
        tmp_path,
        epochs=3,
        val_count=0,
        selection="last",
        gain_db=None,
        feature_norm="stream",
        stream_norm={"prior_s": 2.0, "time_constant_s": 20.0},
    )
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", "--config", str(tmp_path / "train.yaml"), "--log-level", "WARNING"]) == 0
    best = tmp_path / "run" / "fold01" / "best"
    ckpt = load_checkpoint(best)
    assert ckpt.stream_norm.kind == "stream" and ckpt.stream_norm.prior_s == 2.0
    assert ckpt.norm_prior is not None and ckpt.norm_prior[0].shape == (80,)
    assert (
        ckpt.frontend_config.normalize == "none"
    )  # the stream's statistics replace per-window normalisation
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        cli(
            [
                "evaluate",
                "--run",
                str(tmp_path / "run"),
                "--streaming",
                "--episode-s",
                "4",
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    ev = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert ev["utterance"]["pooled"]["confusion"] == summary["utterance"]["pooled"]["confusion"]
    streams = json.loads((tmp_path / "run" / "streaming.json").read_text())
    assert len(streams) == 1 and 0.0 <= streams[0]["accuracy"] <= 1.0 and streams[0]["speech_s"] > 5
    folder = tmp_path / "run" / "streaming"
    replayed = [json.loads(x) for x in (folder / "fold01.events.jsonl").read_text().splitlines()]
    est = [e for e in replayed if e["type"] == "emotion.estimate"]
    assert est and all(e["model"]["stream_norm"] == "stream" for e in est)
    # the same checkpoint and audio through the command a user runs
    out = tmp_path / "daemon.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "run",
            "--log-level",
            "WARNING",
            "--set",
            f"model.checkpoint={best}",
            "--set",
            "publish.websocket.enabled=false",
            "--set",
            "publish.jsonl.enabled=true",
            "--set",
            f"publish.jsonl.path={out}",
            "--set",
            f"streams=[{{id: eval, source: {{path: {folder / 'fold01.wav'}, realtime: false}}}}]",
        ],
        check=True,
        timeout=240,
    )
    live = [json.loads(x) for x in out.read_text().splitlines()]
    live_est = [e for e in live if e["type"] == "emotion.estimate"]
    assert [(e["seq"], e["label"], e["speech"]) for e in live_est] == [
        (e["seq"], e["label"], e["speech"]) for e in est
    ]
    for a, b in zip(live_est, est, strict=True):
        assert a["raw"].keys() == b["raw"].keys()
        assert all(abs(a["raw"][k] - b["raw"][k]) < 1e-6 for k in a["raw"])


@pytest.mark.parametrize(
    "recipe",
    sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_training_recipes_validate(recipe: Path) -> None:
    from dropformer.configio import load_config

    cfg = training.parse_config(load_config(recipe))
    assert cfg.train.epochs >= 1


def test_warm_start_normalises_each_utterance_by_the_speakers_other_utterances() -> None:
    from dropformer.data import Utterance
    from dropformer.normalization import StreamNormalizer, StreamNormConfig

    cfg = StreamNormConfig(kind="stream", prior_s=1.0)
    feats = {u: np.full((50, 3), v) for u, v in (("a", 1.0), ("b", 2.0), ("c", 4.0), ("d", -5.0))}
    utts = [Utterance(u, Path(u), "sad", "s1" if u != "d" else "s2") for u in feats]
    norm = training.StreamNorm(cfg, (np.zeros(3), np.ones(3)))
    warm = training.eval_norms(utts, feats, norm, "warm")
    assert warm is not None
    expected = StreamNormalizer(np.zeros(3), np.ones(3), cfg)
    for other in ("b", "c"):  # never "a" itself, never speaker s2
        expected.update(feats[other])
    np.testing.assert_allclose(warm["a"][0], expected.stats()[0], rtol=1e-6)
    np.testing.assert_allclose(warm["d"][0], 0.0)  # alone on its stream: only the prior
    cold = training.eval_norms(utts, feats, norm, "cold")
    assert (
        cold is not None and sum(np.allclose(m, 0.0) for m, _ in cold.values()) == 2
    )  # one first per speaker
