"""Feature cache on real EmoDB speech: resumable, keyed by front end, same features as the live path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dropformer.data.audio import load_audio
from dropformer.data.emodb import read_emodb
from dropformer.features import apply_gain_db, cache_key, extract_features, normalize_batch
from dropformer.frontends import FrontendConfig, build_frontend

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "emodb"


def test_cache_is_resumable_and_keyed_by_frontend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    utts = read_emodb(FIXTURE).utterances[:4]
    cfg = FrontendConfig(kind="logmel")
    feats = extract_features(utts, cfg, tmp_path, progress=False)
    assert set(feats) == {u.uid for u in utts}
    for u in utts:  # 50 tokens per second of audio, 80 bands, float16 on disk
        assert feats[u.uid].shape[1] == 80 and feats[u.uid].dtype == np.float16
        assert abs(feats[u.uid].shape[0] - 50 * (u.duration_s or 0)) <= 2
    folder = tmp_path / cache_key(cfg, utts)
    assert sorted(p.name for p in folder.iterdir()) == [
        "info.json",
        "packed.json",
        "packed.npy",
    ]  # one mapping
    index = json.loads((folder / "packed.json").read_text())
    assert len(index) == 4
    index.pop(sorted(index)[0])  # as if the run had been interrupted before the last utterance
    (folder / "packed.json").write_text(json.dumps(index))
    with caplog.at_level(logging.INFO, logger="dropformer.features"):
        again = extract_features(utts, cfg, tmp_path, progress=False)
    assert "for 1 of 4 utterances" in caplog.text  # the others are not extracted again
    assert len(json.loads((folder / "packed.json").read_text())) == 4
    for uid in feats:
        np.testing.assert_array_equal(again[uid], feats[uid])
    assert cache_key(FrontendConfig(kind="logmel", n_mels=40), utts) != cache_key(cfg, utts)
    assert cache_key(cfg, utts[:3]) != cache_key(cfg, utts)


def test_cropped_cache_matches_the_live_front_end_and_ignores_level(tmp_path: Path) -> None:
    """Normalising a cached crop equals running the front end on the cropped audio (what the daemon does)."""
    (u,) = [x for x in read_emodb(FIXTURE).utterances if x.uid == "03a01Wa"]
    cfg = FrontendConfig(kind="logmel", normalize="utterance")
    raw = extract_features([u], cfg, tmp_path, progress=False)[u.uid]
    start, frames = 20, 50  # tokens of 20 ms: crop 0.4 s .. 1.4 s
    crop = torch.from_numpy(raw[start : start + frames].astype(np.float32))[None]
    ours = normalize_batch(crop, torch.tensor([frames]), cfg)[0]
    wav = load_audio(u.path)
    front = build_frontend(cfg).eval()
    live: list[torch.Tensor] = []
    for gain in (1.0, 0.5, 0.05):
        piece = torch.from_numpy(gain * wav[start * 320 : (start + frames) * 320 + 352])[
            None
        ]  # frames span n_fft=512
        with torch.no_grad():
            f, n = front(piece, torch.tensor([piece.shape[1]]))
        assert int(n[0]) == frames
        live.append(f[0])
    assert torch.allclose(ours, live[0], atol=0.02)  # float16 cache
    # -6 dB barely changes the normalised features; the log floor makes -26 dB differ more,
    # which the gain augmentation reproduces exactly from the cache.
    assert float((live[0] - live[1]).abs().mean()) < 0.03
    quiet = apply_gain_db(crop, torch.tensor([20 * np.log10(0.05)]))
    aug_err = float((normalize_batch(quiet, torch.tensor([frames]), cfg)[0] - live[2]).abs().mean())
    assert aug_err < 0.03
    assert float((live[0] - live[2]).abs().mean()) > 0.05  # so the augmentation is not a no-op
