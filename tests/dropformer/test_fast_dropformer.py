"""The fast DropFormer against today's implementation, kept verbatim in ``reference_dropformer.py``.

Inference drops tokens as soon as S is known and never builds the dense masks;
training runs exactly as before. Both must give what the reference gives.
"""

from __future__ import annotations

import pytest
import torch

from dropformer import PRESETS, DropFormer, preset
from dropformer.attention import DropAttention, static_band_mask, top_tokens
from tests.dropformer.reference_dropformer import ReferenceDropFormer, dynamic_topk_mask
from tests.dropformer.reference_dropformer import static_band_mask as reference_band

SMALL = dict(input_dim=24, d_model=32, num_heads=4, ffn_dim=64, head_hidden=(32,))
# The default model's head (configs/train/whisper.yaml): 1024-dim Whisper-base features -> d 128.
DEFAULT_SIZE = dict(input_dim=1024, d_model=128, num_heads=4, ffn_dim=256, head_hidden=(128,))


def pair(name: str, seed: int, **size: object) -> tuple[DropFormer, ReferenceDropFormer]:
    torch.manual_seed(seed)
    fast = DropFormer(preset(name, **size))
    ref = ReferenceDropFormer(preset(name, **size))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def assert_same_outputs(
    fast: DropFormer, ref: ReferenceDropFormer, x: torch.Tensor, lengths: torch.Tensor
) -> None:
    a, b = fast(x, lengths), ref(x, lengths)
    assert torch.allclose(a.logits, b.logits, atol=1e-5), (a.logits - b.logits).abs().max()
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5)
    assert torch.equal(a.kept_tokens, b.kept_tokens)
    assert len(a.importance) == len(b.importance)
    for i, j in zip(a.importance, b.importance):
        assert torch.allclose(i, j, atol=1e-5, equal_nan=True)
    for i, j in zip(a.kept_index, b.kept_index):
        assert torch.equal(i, j)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_inference_equals_todays_implementation(name: str) -> None:
    """Every preset, batch 1 and padded batches (one item a single token), several seeds."""
    for seed in range(3):
        fast, ref = pair(name, seed, **SMALL)
        fast.eval(), ref.eval()
        torch.manual_seed(100 + seed)
        x = torch.randn(4, 90, 24)
        with torch.inference_mode():
            assert_same_outputs(fast, ref, x, torch.tensor([90, 37, 64, 1]))
            assert_same_outputs(fast, ref, x[:1], torch.tensor([90]))
            assert_same_outputs(fast, ref, x[:, :50], torch.tensor([50, 50, 50, 50]))


@pytest.mark.parametrize("name", ["dropformer", "no_tdm", "vanilla"])
def test_inference_equals_todays_implementation_at_the_default_size(name: str) -> None:
    """150 tokens (a 3 s window) at the default model's width, with and without padding."""
    fast, ref = pair(name, 0, **DEFAULT_SIZE)
    fast.eval(), ref.eval()
    x = torch.randn(3, 150, 1024)
    with torch.inference_mode():
        assert_same_outputs(fast, ref, x, torch.tensor([150, 150, 150]))
        assert_same_outputs(fast, ref, x, torch.tensor([150, 101, 75]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_training_gives_the_same_gradients(name: str) -> None:
    """Training mode, dropout on (attention dropout included), same seed: the same loss and gradients."""
    fast, ref = pair(name, 0, **SMALL)
    fast.train(), ref.train()
    x, lengths, y = torch.randn(3, 40, 24), torch.tensor([40, 25, 3]), torch.tensor([0, 1, 2])
    losses = []
    for model in (fast, ref):
        torch.manual_seed(123)
        loss = torch.nn.functional.cross_entropy(model(x, lengths).logits, y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for p, q in zip(fast.parameters(), ref.parameters()):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_top_tokens_match_todays_dynamic_mask_with_ties_and_padding() -> None:
    torch.manual_seed(0)
    s = torch.randint(0, 4, (3, 2, 30)).float()  # many exact ties
    valid = torch.arange(30)[None, :] < torch.tensor([30, 17, 4])[:, None]
    for rate in (0.1, 0.25, 0.5, 1.0):
        top = top_tokens(s.masked_fill(~valid[:, None, :], float("-inf")), valid, rate)
        ref = dynamic_topk_mask(s.masked_fill(~valid[:, None, :], float("-inf")), valid, rate)
        assert torch.equal(top[..., :, None] & top[..., None, :], ref)


@pytest.mark.parametrize("lengths", [[20, 13], [20, 20]])
@pytest.mark.parametrize("dynamic,static", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("offsets", [(0, 2), (0, 1, 3), None])
def test_masked_product_equals_the_dense_masked_product(
    dynamic: bool, static: bool, offsets: tuple[int, ...] | None, lengths: list[int]
) -> None:
    """(W * M) V without the mask equals the dense product, ties past k included, with padding
    and without (full items tell ties from ``topk(k + 1)``)."""
    torch.manual_seed(0)
    attn = DropAttention(
        16, 2, keep_rate=0.2, static_offsets=offsets, use_dynamic=dynamic, use_static=static
    ).eval()
    valid = torch.arange(20)[None, :] < torch.tensor(lengths)[:, None]
    w = torch.softmax(
        torch.randn(2, 2, 20, 20).masked_fill(~valid[:, None, None, :], float("-inf")), -1
    )
    v = torch.randn(2, 2, 20, 8)
    for s in (
        torch.rand(2, 2, 20),
        torch.randint(0, 3, (2, 2, 20)).float(),
    ):  # the second has ties past k
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
        m = torch.zeros(2, 2, 20, 20, dtype=torch.bool)  # today's dense M = M_d OR M_s
        if dynamic:
            m |= dynamic_topk_mask(s, valid, 0.2)
        if static:
            m |= reference_band(20, offsets)
        assert torch.allclose(attn.masked_product(w, v, s, valid, lengths), (w * m) @ v, atol=1e-6)
        assert torch.equal(attn.mask(s, valid, lengths, w.dtype).expand_as(m).bool(), m)


def test_static_band_is_built_once_per_length() -> None:
    assert static_band_mask(40, (0, 2)) is static_band_mask(40, (2, 0))
    assert torch.equal(static_band_mask(40, (0, 1, 3)), reference_band(40, (0, 1, 3)))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_training_after_inference_on_the_same_lengths(name: str) -> None:
    """Masks cached by an inference-mode call (the daemon, a validation pass) serve training too."""
    torch.manual_seed(0)
    model = DropFormer(preset(name, **SMALL))
    x, lengths = torch.randn(2, 23, 24), torch.tensor([23, 17])
    with torch.inference_mode():
        model.eval()(x, lengths)
    loss = model.train()(x, lengths).logits.sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropped_tokens_cut_the_work_of_every_later_step() -> None:
    """In inference the output projection and FFN of a block already run on its survivors only."""
    torch.manual_seed(0)
    model = DropFormer(preset("dropformer", **DEFAULT_SIZE)).eval()
    seen: list[int] = []
    for block in model.blocks:
        block.ffn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        out = model(torch.randn(1, 150, 1024), torch.tensor([150]))
    assert out.kept_tokens[0].tolist() == [150, 135, 122, 110, 99]
    assert seen == [135, 122, 110, 99]
