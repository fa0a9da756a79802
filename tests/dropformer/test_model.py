import math

import pytest
import torch

from dropformer import PRESETS, DropFormer, DropFormerConfig, preset
from dropformer.errors import ConfigError
from dropformer.model import token_dropout

SMALL = dict(input_dim=24, d_model=32, num_heads=4, ffn_dim=64, head_hidden=(32,))


def test_token_dropout_drops_bottom_and_keeps_time_order() -> None:
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    imp = torch.tensor([[5.0, 0.1, 4.0, 3.0, 0.2, 6.0, 7.0, 8.0, 9.0, 1.0]])
    valid = torch.ones(1, 10, dtype=torch.bool)
    pos = torch.arange(10)[None]
    x2, valid2, pos2 = token_dropout(x, valid, imp, pos, drop_rate=0.3)  # drops 3: tokens 1, 4, 9
    assert pos2.tolist() == [[0, 2, 3, 5, 6, 7, 8]]
    assert x2.flatten().tolist() == [0, 2, 3, 5, 6, 7, 8]
    assert valid2.all()


def test_token_dropout_counts_per_item_with_padding() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 30, 4)
    valid = torch.arange(30)[None, :] < torch.tensor([30, 12])[:, None]
    imp = torch.rand(2, 30)
    imp[1, 12:] = -10.0  # padding scored lowest must still never be chosen
    x2, valid2, pos2 = token_dropout(x, valid, imp, torch.arange(30).expand(2, 30), 0.1)
    assert valid2.sum(-1).tolist() == [27, 11]
    assert (pos2[1][valid2[1]] < 12).all()
    assert x2.shape == (2, 27, 4)


def test_share_dropped_matches_paper() -> None:
    torch.manual_seed(0)
    model = DropFormer(preset("dropformer", **SMALL)).eval()
    n = 1000
    out = model(torch.randn(1, n, 24), torch.tensor([n]))
    counts = out.kept_tokens[0].tolist()
    assert counts == [1000, 900, 810, 729, 657]  # int rounding of 0.9^k
    dropped = 1 - counts[-1] / n
    assert abs(dropped - (1 - 0.9**4)) < 0.01  # 34.39% in the paper
    out150 = model(torch.randn(1, 150, 24), torch.tensor([150]))
    assert out150.kept_tokens[0].tolist() == [150, 135, 122, 110, 99]


def test_importance_on_original_axis_marks_dropped_tokens() -> None:
    torch.manual_seed(0)
    model = DropFormer(preset("dropformer", **SMALL)).eval()
    out = model(torch.randn(2, 50, 24), torch.tensor([50, 40]))
    assert len(out.importance) == 4
    for layer, imp in enumerate(out.importance):
        assert imp.shape == (2, 50)
        assert torch.isfinite(imp).sum(-1).tolist() == out.kept_tokens[:, layer].tolist()
        assert torch.isnan(imp[1, 40:]).all()
        seen = out.kept_index[layer][1]
        assert set(seen[seen >= 0].tolist()) == set(
            torch.isfinite(imp[1]).nonzero().flatten().tolist()
        )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_backpropagates(name: str) -> None:
    torch.manual_seed(0)
    model = DropFormer(preset(name, **SMALL))
    out = model(torch.randn(3, 40, 24), torch.tensor([40, 25, 3]))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    tdm = preset(name).use_tdm
    assert (out.kept_tokens[0, -1] < 40) == tdm


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_does_not_depend_on_batch_padding(name: str) -> None:
    torch.manual_seed(0)
    model = DropFormer(preset(name, **SMALL)).eval()
    short = torch.randn(1, 37, 24)
    alone = model(short, torch.tensor([37]))
    batch = torch.randn(3, 90, 24)
    batch[1, :37] = short[0]
    together = model(batch, torch.tensor([90, 37, 64]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    assert together.kept_tokens[1].tolist() == alone.kept_tokens[0].tolist()
    for a, b in zip(alone.importance, together.importance):
        assert torch.allclose(a[0], b[1, :37], atol=1e-5, equal_nan=True)
        assert torch.isnan(b[1, 37:]).all()


def test_degenerate_block_equals_softmax_attention_transformer() -> None:
    """KR = 1, all-ones static mask and DR = 0: every block is an ordinary Transformer block."""
    torch.manual_seed(0)
    cfg = DropFormerConfig(
        **SMALL, keep_rate=1.0, drop_rate=0.0, static_offsets=(None,) * 4, dropout=0.0
    )
    drop = DropFormer(cfg).eval()
    plain = DropFormer(preset("vanilla", **SMALL, dropout=0.0)).eval()
    plain.load_state_dict(drop.state_dict())
    x, lengths = torch.randn(2, 33, 24), torch.tensor([33, 20])
    assert torch.allclose(drop(x, lengths).logits, plain(x, lengths).logits, atol=1e-5)
    # and the vanilla block's attention is F.scaled_dot_product_attention with the same weights
    from dropformer.attention import plain_attention_reference

    block = plain.blocks[0].attn
    h = torch.randn(2, 33, 32)
    valid = torch.arange(33)[None, :] < lengths[:, None]
    assert torch.allclose(
        block(h, valid)[0][valid], plain_attention_reference(h, valid, block)[valid], atol=1e-5
    )


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="keep_rate"):
        DropFormerConfig(keep_rate=1.5)
    with pytest.raises(ConfigError, match="static_offsets"):
        DropFormerConfig(num_layers=3)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
    assert math.isclose(preset("no_da").drop_rate, 0.1)
