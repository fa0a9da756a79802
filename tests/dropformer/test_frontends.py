from pathlib import Path

import numpy as np
import pytest
import torch

from dropformer import FrontendConfig, build_frontend
from dropformer.errors import CheckpointError, ConfigError


def test_logmel_shapes_rate_and_level_invariance() -> None:
    fe = build_frontend(FrontendConfig(kind="logmel"))
    torch.manual_seed(0)
    wave = torch.randn(2, 48000) * torch.linspace(0.1, 1.0, 48000)
    feats, lengths = fe(wave, torch.tensor([48000, 32000]))
    assert feats.shape[2] == 80 and fe.feature_dim == 80
    assert lengths.tolist() == [148, 98]  # (1 + (N - n_fft 512) // 160) // 2 at 50 Hz
    assert feats[1, 98:].abs().max() == 0
    quiet, _ = fe(wave * 0.05, torch.tensor([48000, 32000]))
    assert torch.allclose(feats[0, :148], quiet[0, :148], atol=1e-2)  # level removed


def test_logmel_uses_library_filter_bank() -> None:
    from transformers.audio_utils import mel_filter_bank

    fe = build_frontend(FrontendConfig(kind="logmel"))
    ref = mel_filter_bank(
        num_frequency_bins=257,
        num_mel_filters=80,
        min_frequency=20.0,
        max_frequency=8000,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    assert np.allclose(fe.mel_fb.numpy(), ref)


def test_wavlm_loads_from_folder_and_returns_chosen_layer(tiny_wavlm_dir: Path) -> None:
    from transformers import WavLMModel

    fe = build_frontend(FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=2))
    assert len(fe.wavlm.encoder.layers) == 2  # layers above 2 are removed, never run
    torch.manual_seed(0)
    wave = torch.randn(2, 16000) * 0.1
    feats, lengths = fe(wave, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 49, 32) and lengths.tolist() == [49, 24]

    full = WavLMModel.from_pretrained(tiny_wavlm_dir).eval()
    calls: list[int] = []
    for i, layer in enumerate(full.encoder.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    x = (wave[:1] - wave[:1].mean()) / torch.sqrt(
        wave[:1].var(unbiased=False) + 1e-7
    )  # do_normalize
    with torch.no_grad():
        ref = full(x, output_hidden_states=True).hidden_states[2]
    assert calls == [0, 1, 2, 3]
    assert torch.allclose(feats[0], ref[0], atol=1e-4)
    # the short item alone gives the same features as inside the padded batch
    alone, _ = fe(wave[1:, :8000], torch.tensor([8000]))
    assert torch.allclose(alone[0], feats[1, :24], atol=1e-4)


def test_wavlm_missing_folder_and_bad_layer(tmp_path: Path, tiny_wavlm_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="frontend.model"):
        build_frontend(FrontendConfig(kind="wavlm", model=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="frontend.layer"):
        build_frontend(FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=9))
    with pytest.raises(ConfigError, match="frontend.kind"):
        FrontendConfig(kind="mfcc")


def test_logmel_short_item_same_alone_and_in_batch() -> None:
    fe = build_frontend(FrontendConfig(kind="logmel"))
    torch.manual_seed(1)
    wave = torch.randn(2, 40000)
    batch, lengths = fe(wave, torch.tensor([40000, 17000]))
    alone, alone_len = fe(wave[1:, :17000], torch.tensor([17000]))
    assert lengths[1] == alone_len[0] == alone.shape[1]
    assert torch.allclose(batch[1, : lengths[1]], alone[0], atol=1e-4)


def test_level_normalisation_removes_gain_and_keeps_spectral_tilt() -> None:
    fe = build_frontend(FrontendConfig(kind="logmel", normalize="level"))
    torch.manual_seed(2)
    wave = torch.randn(1, 32000) * torch.linspace(0.2, 1.0, 32000)
    loud, _ = fe(wave, torch.tensor([32000]))
    quiet, _ = fe(wave * 0.1, torch.tensor([32000]))
    assert torch.allclose(loud, quiet, atol=1e-2)
    # low-passed noise keeps more energy in low bands: per-band CMVN erases that, 'level' keeps it
    dull = torch.nn.functional.avg_pool1d(wave[None], 9, 1, 4)[0]
    tilt = fe(dull, torch.tensor([32000]))[0][0]
    assert tilt[:, :20].mean() - tilt[:, 60:].mean() > 1.0
    cmvn = build_frontend(FrontendConfig(kind="logmel"))(dull, torch.tensor([32000]))[0][0]
    assert abs(cmvn[:, :20].mean() - cmvn[:, 60:].mean()) < 0.1


def test_wavlm_never_loads_the_layers_above_the_chosen_one(tiny_wavlm_dir: Path) -> None:
    from transformers import WavLMModel

    from dropformer.frontends import _fold_weight_norm

    fe = build_frontend(FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=2))
    full = WavLMModel.from_pretrained(tiny_wavlm_dir)
    _fold_weight_norm(
        full.encoder.pos_conv_embed.conv
    )  # (weight_g, weight_v) -> weight, as the front end does
    upper = sum(p.numel() for layer in full.encoder.layers[2:] for p in layer.parameters())
    assert (
        sum(p.numel() for p in fe.wavlm.parameters())
        == sum(p.numel() for p in full.parameters()) - upper
    )
    assert not any(k.startswith("encoder.layers.2.") for k in fe.wavlm.state_dict())


@pytest.mark.parametrize("conv_dtype", [None, "float32"])
def test_wavlm_bfloat16_agrees_with_float32(
    tiny_wavlm_dir: Path, conv_dtype: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 layers (and bf16 or fp32 convolutions) stay close to the exact fp32 features."""
    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    exact = build_frontend(FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=2))
    fast = build_frontend(
        FrontendConfig(
            kind="wavlm",
            model=str(tiny_wavlm_dir),
            layer=2,
            dtype="bfloat16",
            conv_dtype=conv_dtype,
        )
    )
    assert next(fast.wavlm.encoder.parameters()).dtype == torch.bfloat16
    conv_weight = next(fast.wavlm.feature_extractor.parameters())
    assert conv_weight.dtype == (torch.float32 if conv_dtype == "float32" else torch.bfloat16)
    torch.manual_seed(0)
    wave, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    a, la = exact(wave, lengths)
    b, lb = fast(wave, lengths)
    assert b.dtype == torch.float32 and torch.equal(la, lb)
    cos = torch.nn.functional.cosine_similarity(a[0].flatten(), b[0].flatten(), dim=0)
    assert cos > 0.99
    with pytest.raises(ConfigError, match="frontend.conv_dtype"):
        FrontendConfig(kind="wavlm", conv_dtype="int8")


def test_wavlm_low_precision_weights_are_converted_once_into_the_cache(
    tiny_wavlm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 front end loads a cached bf16 copy of the layers it needs (made once), not the fp32 file."""
    import json

    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    cfg = FrontendConfig(kind="wavlm", model=str(tiny_wavlm_dir), layer=2, dtype="bfloat16")
    first = build_frontend(cfg)
    (copy,) = tmp_path.glob("wavlm-layers1-2-bfloat16-*")
    assert json.loads((copy / "config.json").read_text())["num_hidden_layers"] == 2
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    second = build_frontend(cfg)
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp  # not written again
    wave = torch.randn(1, 16000) * 0.1
    assert torch.equal(
        first(wave, torch.tensor([16000]))[0], second(wave, torch.tensor([16000]))[0]
    )


@pytest.mark.parametrize("stable_layer_norm", [True, False], ids=["layer-norm", "group-norm"])
def test_time_major_conv_encoder_computes_the_models_own_convolutions(
    tmp_path: Path, stable_layer_norm: bool
) -> None:
    """The unfold-and-multiply encoder in fp32 is the transformers encoder's arithmetic, for both
    encoder kinds (WavLM-Large's layer norms, WavLM-Base's group norm)."""
    from transformers import WavLMModel

    from dropformer.precision import TimeMajorConvEncoder
    from tests.fixtures.models import save_tiny_wavlm

    model = WavLMModel.from_pretrained(
        save_tiny_wavlm(tmp_path / "m", stable_layer_norm=stable_layer_norm)
    ).eval()
    ours = TimeMajorConvEncoder(model.feature_extractor.conv_layers, torch.float32)
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(ours(wave), model.feature_extractor(wave), rtol=1e-4, atol=1e-5)


def test_wavlm_products_in_bfloat16_keep_everything_else_in_float32(
    tiny_wavlm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """products_dtype: every product's weight is bf16, no fp32 Linear is left, every other
    parameter (norms, biases, position embeddings) is fp32, and the features stay close to fp32
    ones, closer than the whole model in bf16; the front end loads the cached bf16 copy."""
    from dropformer.precision import ProductConv1d, ProductLinear, TimeMajorConvEncoder

    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    model = str(tiny_wavlm_dir)
    exact = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=3))
    fast = build_frontend(
        FrontendConfig(kind="wavlm", model=model, layer=3, products_dtype="bfloat16")
    )
    whole = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=3, dtype="bfloat16"))
    modules = list(fast.wavlm.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    products = [m for m in modules if isinstance(m, (ProductLinear, ProductConv1d))]
    assert len(products) == 3 * 7 + 2  # q k v out fc1 fc2 gate per layer; projection, position conv
    assert isinstance(fast.wavlm.feature_extractor.inner, TimeMajorConvEncoder)
    assert all(m.weight.dtype == torch.bfloat16 for m in products)
    assert all(p.dtype == torch.float32 for p in fast.wavlm.parameters())
    assert list(tmp_path.glob("wavlm-layers1-3-bfloat16-*"))  # loaded from the bf16 copy
    torch.manual_seed(0)
    wave, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    a, la = exact(wave, lengths)
    b, lb = fast(wave, lengths)
    c, _ = whole(wave, lengths)
    assert b.dtype == torch.float32 and torch.equal(la, lb)
    assert torch.equal(b[1, int(lb[1]) :], torch.zeros_like(b[1, int(lb[1]) :]))  # padding stays 0
    err, err_whole = (a - b).norm() / a.norm(), (a - c).norm() / a.norm()
    assert err < 0.02 and err < err_whole
    one, _ = fast(wave[1:, :12000], lengths[1:])  # the padded item alone: padding changes nothing
    torch.testing.assert_close(one[0], b[1, : one.shape[1]], rtol=0.02, atol=0.02)


def test_products_dtype_needs_float32_elsewhere() -> None:
    with pytest.raises(ConfigError, match="frontend.products_dtype = 'int8'"):
        FrontendConfig(kind="wavlm", products_dtype="int8")
    with pytest.raises(ConfigError, match="set frontend.dtype: float32"):
        FrontendConfig(kind="wavlm", products_dtype="bfloat16", dtype="bfloat16")


@pytest.mark.parametrize(
    "low", [{"products_dtype": "bfloat16"}, {"dtype": "bfloat16"}], ids=["products", "layers"]
)
def test_wavlm_low_precision_layers_with_exact_convolutions(
    tiny_wavlm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: dict[str, str]
) -> None:
    """conv_dtype: float32 beside bf16 layers (or bf16 products) keeps the convolutional encoder
    exact: its fp32 weights are read alone from the original file, the layers come from the bf16
    copy (so no fp32 copy of the layers is ever resident). With bf16 products the exact encoder is
    computed time-major (same features to float rounding)."""
    from dropformer.precision import ProductLinear, TimeMajorConvEncoder

    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    model = str(tiny_wavlm_dir)
    exact = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=3))
    fast = build_frontend(
        FrontendConfig(kind="wavlm", model=model, layer=3, conv_dtype="float32", **low)
    )
    assert list(tmp_path.glob("wavlm-layers1-3-bfloat16-*"))  # the layers came from the copy
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        ours = fast.wavlm.feature_extractor(wave)  # handed on in the layers' precision
        theirs = exact.wavlm.feature_extractor(wave).to(ours.dtype)
        if "products_dtype" in low:
            assert isinstance(fast.wavlm.feature_extractor.inner, TimeMajorConvEncoder)
            assert fast.wavlm.feature_extractor.inner.weight1.dtype == torch.float32
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(ours, theirs)
        a, _ = exact(wave, torch.tensor([16000]))
        b, _ = fast(wave, torch.tensor([16000]))
    dense = fast.wavlm.encoder.layers[0].feed_forward.output_dense
    if "products_dtype" in low:
        assert isinstance(dense, ProductLinear)
    else:
        assert dense.weight.dtype == torch.bfloat16
    assert ((a - b).norm() / a.norm()) < 0.02


def test_wavlm_compile_runs_whole_windows_through_one_compiled_graph(
    tiny_wavlm_dir: Path,
) -> None:
    """frontend.compile: compiled once for the window length at prepare (start-up), then every
    unpadded window of that length goes through the compiled graph one at a time, with the eager
    model's features; other lengths and padded batches run eagerly (never a compile on a live
    window)."""
    model = str(tiny_wavlm_dir)
    exact = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=2))
    fast = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=2, compile=True))
    assert fast.prepare(16000) is True and fast.compiled_samples == 16000
    assert fast.prepare(16000) is False  # once per length
    calls: list[tuple[int, ...]] = []
    compiled = fast._compiled

    def counting(x: torch.Tensor) -> object:
        calls.append(tuple(x.shape))
        return compiled(x)

    fast._compiled = counting
    fast.live_stance = "fail_on_recompile"  # a failed guard on a live window raises here
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    torch.manual_seed(0)
    windows = torch.randn(3, 16000) * 0.1
    with torch.inference_mode():
        a, la = exact(windows, torch.full((3,), 16000))
        b, lb = fast(windows, torch.full((3,), 16000))
        assert calls == [(1, 16000)] * 3
        assert counters["stats"]["unique_graphs"] == graphs  # rows of a batch: no new graph
        assert torch.equal(la, lb) and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        padded = torch.tensor([16000, 12000])
        c, _ = fast(windows[:2], padded)
        d, _ = fast(windows[:1, :12000], torch.tensor([12000]))
        assert len(calls) == 3  # eager for those
        assert torch.allclose(c, exact(windows[:2], padded)[0], atol=1e-5)
        assert torch.allclose(d, exact(windows[:1, :12000], torch.tensor([12000]))[0], atol=1e-5)
    with pytest.raises(ConfigError, match="frontend.compile"):
        FrontendConfig(kind="logmel", compile=True)


def test_wavlm_compile_with_prepacked_weights_keeps_the_eager_answers(
    tiny_wavlm_dir: Path,
) -> None:
    """frontend.compile_prepack: true (inductor's packed copy of the weights, faster on some CPUs)
    compiles and gives the eager features; without compile the setting is refused, naming the fix."""
    model = str(tiny_wavlm_dir)
    exact = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=2))
    packed = build_frontend(
        FrontendConfig(kind="wavlm", model=model, layer=2, compile=True, compile_prepack=True)
    )
    assert packed.prepare(16000) is True
    packed.live_stance = "fail_on_recompile"
    torch.manual_seed(1)
    windows = torch.randn(2, 16000) * 0.1
    with torch.inference_mode():
        a, _ = exact(windows, torch.full((2,), 16000))
        b, _ = packed(windows, torch.full((2,), 16000))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="frontend.compile_prepack .*set both"):
        FrontendConfig(kind="wavlm", compile_prepack=True)


def test_wavlm_compile_that_fails_falls_back_to_eager_with_a_warning(
    tiny_wavlm_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No C++ compiler (or any compile error): a WARNING naming frontend.compile and the fix, and
    the front end keeps answering eagerly; it never retries on a live window."""

    def broken(*args: object, **kwargs: object) -> object:
        def run(*a: object, **k: object) -> object:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = str(tiny_wavlm_dir)
    fast = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=2, compile=True))
    with caplog.at_level("WARNING"):
        assert fast.prepare(16000) is False
    assert "frontend.compile failed" in caplog.text and "C++ compiler" in caplog.text
    assert fast.compiled_samples is None
    wave = torch.randn(1, 16000) * 0.1
    exact = build_frontend(FrontendConfig(kind="wavlm", model=model, layer=2))
    with torch.inference_mode():
        assert torch.allclose(
            fast(wave, torch.tensor([16000]))[0], exact(wave, torch.tensor([16000]))[0]
        )
