"""Label sets other than the four, end to end: the readers map EmoDB's and nEMO's other
emotions when ``data.labels`` asks for them, training refuses a class no utterance has,
and a six-class checkpoint trained on real speech is served by the daemon with its own
labels as the estimates' keys."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import yaml

import dropformer.training as training
from dropformer.checkpoint import load_checkpoint
from dropformer.data import CLASS_NAMES, FOUR_CLASSES
from dropformer.data.emodb import read_emodb
from dropformer.data.nemo import read_nemo
from dropformer.errors import ConfigError, DataError
from streamer.cli import main as cli
from streamer.core.affect import PROTOTYPES, arousal_valence
from streamer.core.events import validate_event
from tests.dropformer.test_training import FIXTURE, TINY_MODEL

SIX = ["neutral", "happy", "angry", "sad", "fear", "surprise"]


def _emodb_all_codes(root: Path) -> Path:
    """Real EmoDB speech under names carrying each of EmoDB's seven emotion letters."""
    (root / "wav").mkdir(parents=True)
    sources = sorted(FIXTURE.glob("*.wav"))
    for i, code in enumerate("WFNTLEA"):  # anger happiness neutral sadness boredom disgust fear
        shutil.copy(sources[i], root / "wav" / f"11a0{i}{code}a.wav")
    return root


def _nemo_six(root: Path) -> Path:
    """A miniature nEMO release with all six of its emotions (real EmoDB speech, two speakers)."""
    (root / "wav").mkdir(parents=True)
    rows = ["file,speaker,gender,age,emotion,text,duration_s"]
    sources = sorted(FIXTURE.glob("*.wav"))
    emotions = ["anger", "fear", "happiness", "neutral", "sadness", "surprised"]
    for i, (spk, emo) in enumerate((s, e) for s in ("AA0", "BB0") for e in emotions):
        wav, sr = sf.read(sources[i % len(sources)], dtype="float32")
        name = f"{spk}_{emo}_{i}.flac"
        sf.write(root / "wav" / name, wav, sr, format="FLAC")
        rows.append(f"{name},{spk},x,30,{emo},zdanie,{len(wav) / sr:.3f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_readers_map_the_other_emotions_only_when_data_labels_asks(tmp_path: Path) -> None:
    emodb = _emodb_all_codes(tmp_path / "emodb")
    four = read_emodb(emodb)
    assert four.labels == FOUR_CLASSES and len(four.utterances) == 4
    assert dict(four.report.excluded) == {"boredom": 1, "disgust": 1, "fear": 1}
    assert not four.report.problems  # classes outside data.labels are excluded, not problems
    every = read_emodb(emodb, labels=CLASS_NAMES)
    assert sorted(u.label for u in every.utterances) == sorted(
        ["angry", "happy", "neutral", "sad", "boredom", "disgust", "fear"]
    )
    assert not every.report.excluded and not every.report.problems
    # an explicit label_map that sends a name outside data.labels is the user's mistake
    wrong = read_emodb(emodb, labels=FOUR_CLASSES, label_map={"fear": "afraid"})
    assert len(wrong.report.problems) == 1 and "'afraid'" in wrong.report.problems[0].reason

    nemo = _nemo_six(tmp_path / "nemo")
    six = read_nemo(nemo, labels=tuple(SIX))
    assert sorted({u.label for u in six.utterances}) == sorted(SIX) and len(six.utterances) == 12
    default = read_nemo(nemo)
    assert dict(default.report.excluded) == {"fear": 2, "surprised": 2}
    assert len(default.utterances) == 8 and not default.report.problems


def test_training_refuses_a_class_that_no_utterance_has(tmp_path: Path) -> None:
    cfg = training.parse_config(
        {
            "data": {"corpus": "emodb", "root": str(FIXTURE), "labels": SIX},
            "frontend": {"kind": "logmel"},
            "cache_dir": str(tmp_path / "cache"),
            "out_dir": str(tmp_path / "run"),
        }
    )
    with pytest.raises(DataError, match=r"data.labels .*\['fear', 'surprise'\]"):
        training.prepare(cfg)
    with pytest.raises(ConfigError, match="data.labels: needs at least 2 distinct"):
        training.parse_config({"data": {"corpus": "emodb", "labels": ["sad", "sad"]}})


def _six_class_recipe(tmp_path: Path) -> dict[str, Any]:
    return {
        "data": {
            "labels": SIX,
            "sources": [
                {"name": "emodb", "corpus": "emodb", "root": str(FIXTURE)},
                {"name": "nemo", "corpus": "nemo", "root": str(_nemo_six(tmp_path / "nemo"))},
            ],
        },
        "frontend": {"kind": "logmel"},
        "model": {"preset": "dropformer", "overrides": TINY_MODEL},
        "train": {
            "folds_scheme": "all",
            "selection": "last",
            "val_count": 0,
            "balance": "source_class",
            "epochs": 2,
            "batch_size": 4,
            "num_threads": 1,
            "progress": False,
            "feature_norm": "stream",
        },
        "cache_dir": str(tmp_path / "cache"),
        "out_dir": str(tmp_path / "run"),
    }


async def test_six_class_model_trains_exports_and_the_daemon_keys_scores_by_its_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dropformer.configio import validate
    from streamer.config import DaemonConfig
    from streamer.daemon import Daemon

    (tmp_path / "six.yaml").write_text(yaml.safe_dump(_six_class_recipe(tmp_path)))
    argv = ["train", "--config", str(tmp_path / "six.yaml"), "--log-level", "WARNING"]
    assert cli([*argv, "--export", str(tmp_path / "six")]) == 0
    ckpt = load_checkpoint(tmp_path / "six")
    assert ckpt.labels == SIX and ckpt.config.num_classes == 6
    assert ckpt.meta["licence"] == "CC-BY-NC-SA-4.0"  # nEMO in the data: its terms travel

    caplog.set_level(logging.WARNING)
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tmp_path / "six")},
            "streams": [
                {"id": "f", "source": {"path": str(FIXTURE / "03a01Wa.wav"), "realtime": False}}
            ],
            "gate": {"kind": "none"},
            "windowing": {"first_window": "early", "min_window_s": 0.5},
            "publish": {
                "websocket": {"port": 0},
                "jsonl": {"enabled": True, "path": str(tmp_path / "events.jsonl")},
            },
        },
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 120)
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    estimates = [e for e in events if e["type"] == "emotion.estimate"]
    assert len(estimates) >= 2
    for e in events:
        validate_event(e)
    for e in estimates:
        assert list(e["scores"]) == SIX and list(e["raw"]) == SIX
        assert e["label"] in SIX
        a, v = arousal_valence(e["scores"])
        assert e["arousal"] == pytest.approx(a, abs=1e-3)
        assert e["valence"] == pytest.approx(v, abs=1e-3)
    assert "no arousal/valence position" not in caplog.text  # all six are placed


async def test_a_label_without_a_position_is_served_at_the_centre_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from dropformer import DropFormer, FrontendConfig, preset, save_checkpoint
    from dropformer.configio import validate
    from streamer.config import DaemonConfig
    from streamer.daemon import Daemon

    torch.manual_seed(0)
    model = DropFormer(preset("dropformer", input_dim=80, num_classes=3, **TINY_MODEL))
    labels = ["neutral", "angry", "grumpy"]
    save_checkpoint(
        tmp_path / "ckpt", model, frontend_config=FrontendConfig(kind="logmel"), labels=labels
    )
    caplog.set_level(logging.WARNING)
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tmp_path / "ckpt")},
            "streams": [
                {"id": "f", "source": {"path": str(FIXTURE / "03a01Wa.wav"), "realtime": False}}
            ],
            "gate": {"kind": "none"},
            "publish": {
                "websocket": {"port": 0},
                "jsonl": {"enabled": True, "path": str(tmp_path / "events.jsonl")},
            },
        },
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 120)
    assert "['grumpy'] have no arousal/valence position" in caplog.text
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    estimates = [e for e in events if e["type"] == "emotion.estimate"]
    assert estimates
    for e in estimates:
        validate_event(e)
        s = e["scores"]
        # grumpy weighs in at the centre: only angry moves arousal and valence
        angry_a, angry_v = PROTOTYPES["angry"]
        assert e["arousal"] == pytest.approx(angry_a * s["angry"] / sum(s.values()), abs=1e-3)
        assert e["valence"] == pytest.approx(angry_v * s["angry"] / sum(s.values()), abs=1e-3)
