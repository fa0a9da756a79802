"""The compiled head (dropformer/compiled.py) gives the eager model's outputs."""

from __future__ import annotations

import pytest
import torch

from dropformer import DropFormer, preset
from dropformer.attention import DropAttention, _top_tokens, _top_tokens_by_count
from dropformer.compiled import compile_for_inference
from dropformer.model import DropFormerOutput, _keep_index_by_rank, tdm_keep_index
from tests.dropformer.reference_dropformer import dynamic_topk_mask, static_band_mask

TINY = dict(input_dim=12, d_model=16, num_heads=2, ffn_dim=32, head_hidden=(16,))


def assert_same_outputs(a: DropFormerOutput, b: DropFormerOutput) -> None:
    assert torch.allclose(a.logits, b.logits, atol=1e-5), (a.logits - b.logits).abs().max()
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5)
    assert torch.equal(a.kept_tokens, b.kept_tokens)
    for i, j in zip(a.importance, b.importance, strict=True):
        assert torch.allclose(i, j, atol=1e-5, equal_nan=True)
    for i, j in zip(a.kept_index, b.kept_index, strict=True):
        assert torch.equal(i, j)


@pytest.mark.slow  # two graphs, about half a minute on two cores
def test_compiled_outputs_equal_eager() -> None:
    """A full window at batch 1 and a padded batch (one item a single token); a third shape,
    past ``max_graphs``, runs eagerly."""
    torch.manual_seed(0)
    model = DropFormer(preset("dropformer", **TINY)).eval()
    head = compile_for_inference(model, max_graphs=2)
    x = torch.randn(3, 40, 12)
    with torch.inference_mode():
        for feats, lengths in (
            (x[:1], torch.tensor([40])),
            (x, torch.tensor([40, 23, 1])),
            (x[:2], torch.tensor([40, 40])),
        ):
            assert_same_outputs(head(feats, lengths), model(feats, lengths))
    assert len(head._shapes) == 2


def masks_and_tdm(
    attn: DropAttention,
    w: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    valid: torch.Tensor,
    lengths: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W * M) V and TDM's index, by whichever way the caller's mode takes."""
    return attn.masked_product(w, v, s, valid, lengths), tdm_keep_index(
        s.mean(1).masked_fill(~valid, float("-inf")), valid, lengths, 0.25
    )[0]


def tied_inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    valid = torch.arange(20)[None, :] < torch.tensor([20, 13])[:, None]
    w = torch.softmax(
        torch.randn(2, 2, 20, 20).masked_fill(~valid[:, None, None, :], float("-inf")), -1
    )
    s = torch.randint(0, 3, (2, 2, 20)).float().masked_fill(~valid[:, None, :], float("-inf"))
    return w, torch.randn(2, 2, 20, 8), s, valid


@pytest.mark.parametrize("compiled", [False, True])
def test_the_graphs_ways_keep_ties(compiled: bool) -> None:
    """Exact ties at the k-th score and in TDM's ranking: the graph's product (no dense fallback)
    and its ranking by comparisons give today's dense product and sorted index. Without
    ``compiled`` the same formulas run eagerly (the scores are given: S itself may differ by an
    ulp between a graph and eager code, which is what decides a real near-tie)."""
    w, v, s, valid = tied_inputs()
    lengths = [20, 13]
    attn = DropAttention(16, 2, keep_rate=0.2, static_offsets=(0, 1, 3)).eval()
    dense = (w * (dynamic_topk_mask(s, valid, 0.2) | static_band_mask(20, (0, 1, 3)))) @ v
    eager_index = masks_and_tdm(attn, w, v, s, valid, lengths)[1]
    if compiled:
        fn = torch.compile(masks_and_tdm, fullgraph=True, dynamic=False)
        with torch.inference_mode():
            y, index = fn(attn, w, v, s, valid, lengths)
    else:
        y = attn.compiled_product(w, v, s, valid, lengths, (0, 1, 3))
        imp = s.mean(1).masked_fill(~valid, float("-inf"))
        index = _keep_index_by_rank(imp, valid, lengths, [5, 3], [15, 10])  # int(0.25 * n)
    assert torch.allclose(y, dense, atol=1e-6)
    assert torch.equal(index, eager_index)


def test_top_tokens_by_count_equal_topk_with_ties_and_padding() -> None:
    torch.manual_seed(0)
    valid = torch.arange(30)[None, :] < torch.tensor([30, 17, 4, 0])[:, None]
    for s in (torch.rand(4, 2, 30), torch.randint(0, 4, (4, 2, 30)).float()):
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
        for lengths in ([30, 17, 4, 0], [30, 30, 30, 30]):
            v = valid if lengths[-1] == 0 else torch.ones_like(valid)
            for rate in (0.0, 0.1, 0.25, 1.0):
                want = _top_tokens(s, v, rate, lengths)[0]
                assert torch.equal(_top_tokens_by_count(s, v, rate, lengths), want)
