import torch

from dropformer.attention import (
    DropAttention,
    dynamic_topk_mask,
    plain_attention_reference,
    static_band_mask,
)

# Figure 3 of the paper, rows a = 1..6, columns b = 1..6.
FIG3_LAYERS_1_2 = [
    [1, 0, 1, 0, 0, 0],
    [0, 1, 0, 1, 0, 0],
    [1, 0, 1, 0, 1, 0],
    [0, 1, 0, 1, 0, 1],
    [0, 0, 1, 0, 1, 0],
    [0, 0, 0, 1, 0, 1],
]
FIG3_LAYERS_3_4 = [
    [1, 1, 0, 1, 0, 0],
    [1, 1, 1, 0, 1, 0],
    [0, 1, 1, 1, 0, 1],
    [1, 0, 1, 1, 1, 0],
    [0, 1, 0, 1, 1, 1],
    [0, 0, 1, 0, 1, 1],
]


def test_static_masks_reproduce_figure_3() -> None:
    from dropformer.config import PAPER_STATIC_OFFSETS

    expected = [FIG3_LAYERS_1_2, FIG3_LAYERS_1_2, FIG3_LAYERS_3_4, FIG3_LAYERS_3_4]
    for offsets, fig in zip(PAPER_STATIC_OFFSETS, expected):
        assert static_band_mask(6, offsets).int().tolist() == fig


def test_dynamic_mask_keeps_rows_and_columns_of_top_k() -> None:
    s = torch.tensor([[[0.1, 3.0, 0.2, 2.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]]])  # (B=1, H=1, T=10)
    valid = torch.ones(1, 10, dtype=torch.bool)
    m = dynamic_topk_mask(s, valid, keep_rate=0.2)[0, 0]  # k = 2 -> tokens 1 and 3
    expected = torch.zeros(10, 10, dtype=torch.bool)
    for a in (1, 3):
        for b in (1, 3):
            expected[a, b] = True
    assert torch.equal(m, expected)


def test_dynamic_mask_keeps_ties_and_ignores_padding() -> None:
    s = torch.tensor([[[1.0, 2.0, 2.0, 0.5, 9.0, 9.0]]])
    valid = torch.tensor([[True, True, True, True, False, False]])  # padding has the largest scores
    m = dynamic_topk_mask(s, valid, keep_rate=0.25)[
        0, 0
    ]  # k = int(0.25 * 4) = 1, tie at 2.0 keeps both
    kept = m.any(-1).nonzero().flatten().tolist()
    assert kept == [1, 2]


def test_k_zero_keeps_nothing_dynamic() -> None:
    s = torch.rand(1, 2, 5)
    assert not dynamic_topk_mask(s, torch.ones(1, 5, dtype=torch.bool), keep_rate=0.1).any()


def test_full_masks_equal_plain_softmax_attention() -> None:
    torch.manual_seed(0)
    attn = DropAttention(32, 4, keep_rate=1.0, static_offsets=None, dropout=0.0).eval()
    x = torch.randn(3, 17, 32)
    valid = torch.arange(17)[None, :] < torch.tensor([17, 11, 5])[:, None]
    out, _ = attn(x, valid)
    ref = plain_attention_reference(x, valid, attn)
    assert torch.allclose(out[valid], ref[valid], atol=1e-5)


def test_masks_change_the_output() -> None:
    torch.manual_seed(0)
    attn = DropAttention(32, 4, keep_rate=0.1, static_offsets=(0, 2), dropout=0.0).eval()
    x = torch.randn(1, 20, 32)
    valid = torch.ones(1, 20, dtype=torch.bool)
    assert not torch.allclose(
        attn(x, valid)[0], plain_attention_reference(x, valid, attn), atol=1e-3
    )


def test_importance_is_column_sum_over_valid_rows() -> None:
    torch.manual_seed(1)
    attn = DropAttention(16, 2, dropout=0.0).eval()
    x = torch.randn(1, 8, 16)
    valid = torch.tensor([[True] * 6 + [False] * 2])
    _, s = attn(x, valid)
    assert torch.isinf(s[..., 6:]).all()
    # each valid query row sums to one, so the column sums add up to the number of valid rows
    assert torch.allclose(s[..., :6].sum(-1), torch.full((1, 2), 6.0), atol=1e-5)
